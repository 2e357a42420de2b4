"""Candidate (b): one Triton kernel for all heads; each program branches on its head's mode.

Grid (query blocks, batch * query heads). A program reads its head's mode, walks the head's list of
full key blocks (no mask) and then its list of partial key blocks (token rule of the mode: causal +
padding, SSA sink/window, XA selected blocks), with an online softmax. K/V are read through the
KV head h // groups: GQA without repeating K/V. Lists come from blocks.block_lists.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
    HAVE_TRITON = True
except ImportError:  # CPU-only installs
    HAVE_TRITON = False

from ..masks import SSA, XA
from .blocks import block_lists

if HAVE_TRITON:
    _SSA = tl.constexpr(SSA)
    _XA = tl.constexpr(XA)

    @triton.jit
    def _softmax_step(s, v, m_i, l_i, acc):
        """One online-softmax update with a block of base-2 scores s and values v."""
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a fully masked row so far stays at 0
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        return m_new, l_i * alpha + tl.sum(p, 1), acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)

    @triton.jit
    def _hybrid_fwd(Q, K, V, O, MODES, START, END, PC, PI, FC, FI, KEEP, sm_scale,
                    sqb, sqh, sqs, skb, skh, sks, svb, svh, svs, sob, soh, sos,
                    H, G, S_LEN, NQ, NK, NQX, NKX, SINK, LOCAL,
                    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    XA_B: tl.constexpr, HAS_XA: tl.constexpr, EVEN: tl.constexpr):
        pid_m = NQ - 1 - tl.program_id(0)  # heaviest (last) query blocks first
        pid_bh = tl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        kvh = h // G
        mode = tl.load(MODES + pid_bh)
        st = tl.load(START + b)
        en = tl.load(END + b)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        q_ptrs = Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh + offs_m[:, None].to(tl.int64) * sqs + offs_d[None, :]
        if EVEN:
            q = tl.load(q_ptrs)
        else:
            q = tl.load(q_ptrs, mask=offs_m[:, None] < S_LEN, other=0.0)
        k_base = K + b.to(tl.int64) * skb + kvh.to(tl.int64) * skh
        v_base = V + b.to(tl.int64) * svb + kvh.to(tl.int64) * svh
        qk_scale = sm_scale * 1.4426950408889634
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        row = pid_bh.to(tl.int64) * NQ + pid_m
        hi = tl.minimum(offs_m, en - 1)

        # full blocks: every pair kept
        n_full = tl.load(FC + row)
        for i in range(0, n_full):
            j = tl.load(FI + row * NK + i)
            offs_k = j * BLOCK_N + offs_n
            if EVEN:
                k = tl.load(k_base + offs_k[None, :].to(tl.int64) * sks + offs_d[:, None])
                v = tl.load(v_base + offs_k[:, None].to(tl.int64) * svs + offs_d[None, :])
            else:
                k = tl.load(k_base + offs_k[None, :].to(tl.int64) * sks + offs_d[:, None],
                            mask=offs_k[None, :] < S_LEN, other=0.0)
                v = tl.load(v_base + offs_k[:, None].to(tl.int64) * svs + offs_d[None, :],
                            mask=offs_k[:, None] < S_LEN, other=0.0)
            s = tl.dot(q, k) * qk_scale
            if not EVEN:
                s = tl.where(offs_k[None, :] < S_LEN, s, float("-inf"))
            m_i, l_i, acc = _softmax_step(s, v, m_i, l_i, acc)

        # partial blocks: the mode's token rule
        n_part = tl.load(PC + row)
        for i in range(0, n_part):
            j = tl.load(PI + row * NK + i)
            offs_k = j * BLOCK_N + offs_n
            k = tl.load(k_base + offs_k[None, :].to(tl.int64) * sks + offs_d[:, None],
                        mask=offs_k[None, :] < S_LEN, other=0.0)
            v = tl.load(v_base + offs_k[:, None].to(tl.int64) * svs + offs_d[None, :],
                        mask=offs_k[:, None] < S_LEN, other=0.0)
            ok = (offs_k[None, :] >= st) & (offs_k[None, :] <= hi[:, None])
            ssa = (offs_k[None, :] < st + SINK) | (offs_k[None, :] > hi[:, None] - LOCAL)
            ok = ok & ((mode != _SSA) | ssa)
            if HAS_XA:
                kb = (j * BLOCK_N) // XA_B
                qb = offs_m // XA_B
                kp = tl.load(KEEP + (pid_bh.to(tl.int64) * NQX + qb) * NKX + kb,
                             mask=(offs_m < S_LEN) & ((offs_m * 0 + mode) == _XA), other=0)
                xa = (kp[:, None] != 0) | (qb[:, None] == kb) | (kb == st // XA_B)
                ok = ok & ((mode != _XA) | xa)
            s = tl.dot(q, k) * qk_scale
            s = tl.where(ok, s, float("-inf"))
            m_i, l_i, acc = _softmax_step(s, v, m_i, l_i, acc)

        l_safe = tl.where(l_i == 0.0, 1.0, l_i)
        out = acc / l_safe[:, None]
        o_ptrs = O + b.to(tl.int64) * sob + h.to(tl.int64) * soh + offs_m[:, None].to(tl.int64) * sos + offs_d[None, :]
        if EVEN:
            tl.store(o_ptrs, out.to(O.dtype.element_ty))
        else:
            tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=offs_m[:, None] < S_LEN)


def triton_lists(modes_q, start, end, seq, config, xa_keep=None, skip_fa=False, block_m=128, block_n=64):
    return block_lists(modes_q, start, end, seq, config, block_m, block_n, xa_keep, skip_fa)


def triton_hybrid(q, k, v, modes_q, start, end, config, scale, xa_keep=None, skip_fa=False,
                  block_m: int = 128, block_n: int = 64, num_warps: int = 8, num_stages: int = 3,
                  lists=None, has_xa: bool | None = None) -> torch.Tensor:
    """Hybrid attention [b, hq, s, d] in one launch. modes_q: [b, hq] per query head."""
    if not HAVE_TRITON:
        raise RuntimeError("the Triton hybrid kernel needs triton")
    b, hq, s, d = q.shape
    hk = k.shape[1]
    if has_xa is None:
        has_xa = xa_keep is not None and bool((modes_q == XA).any())
    if has_xa and config.xa_block % block_n:
        block_n = 64
    if lists is None:
        lists = block_lists(modes_q, start, end, s, config, block_m, block_n,
                            xa_keep if has_xa else None, skip_fa, has_xa)
    pc, pi, fc, fi = lists
    nq, nk = pi.shape[-2], pi.shape[-1]
    out = torch.empty_like(q)
    for t in (q, k, v):
        assert t.stride(-1) == 1
    keep = xa_keep.to(torch.uint8).contiguous() if has_xa else pc
    nqx = keep.shape[2] if has_xa else 1
    nkx = keep.shape[3] if has_xa else 1
    even = s % block_m == 0 and s % block_n == 0
    grid = (nq, b * hq)
    _hybrid_fwd[grid](q, k, v, out, modes_q.to(torch.int32).contiguous(), start, end, pc, pi, fc, fi,
                      keep, scale,
                      q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                      v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
                      hq, hq // hk, s, nq, nk, nqx, nkx, config.sink, config.local,
                      HEAD_DIM=d, BLOCK_M=block_m, BLOCK_N=block_n, XA_B=config.xa_block,
                      HAS_XA=has_xa, EVEN=even, num_warps=num_warps, num_stages=num_stages)
    return out
