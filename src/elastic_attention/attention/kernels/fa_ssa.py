"""FA and SSA heads of one layer in one Triton launch, the decisions read on the GPU.

Small layers (a 135M model at 8K-16K tokens) are bound by the host: a layer's whole attention
takes ~0.2 ms of GPU time, while reading the decisions back to the host (one sync a layer), building
a BlockMask and calling the compiled FlexAttention cost more than the sparse heads save
(benchmarks/prefill_overhead.py, docs/benchmarks.md). Here each program reads its KV head's mode from
the decisions tensor and walks key-block ranges computed from the mode, so nothing waits for the GPU
and the launch is the only host work.

Per query block [r0, r0 + BM) the key blocks are cut into four ranges, evaluated with the token rule
only where a block can hold both kept and dropped pairs:
  sink   [0, sink_hi)       masked  (SSA only: keys below `sink`)
  edge   [w_lo, w_full)     masked  (SSA only: the window's lower edge)
  inner  [w_full, diag_lo)  no mask (FA: every block below the diagonal; SSA: blocks inside every row's window)
  diag   [diag_lo, diag_hi) masked  (causal)
Unpadded prompts and FA / SSA heads only; padding and XA heads take `hybrid_prefill`'s other paths.
"""

from __future__ import annotations

import sys

import torch

try:
    import triton
    import triton.language as tl
    HAVE_TRITON = True
except ImportError:  # CPU-only installs
    HAVE_TRITON = False

from ..masks import SSA
from .launcher import Launch

SKIP = -1  # a mode only this kernel knows: the head is left alone (its output rows are not written)

# (BLOCK_M, BLOCK_N, num_warps, num_stages) per head_dim: the fastest of six or near it on an H200 at
# 8K-32K (benchmarks/prefill_overhead.py --configs; docs/benchmarks.md). BLOCK_M is a multiple of BLOCK_N.
CONFIGS = {64: (64, 64, 4, 3), 128: (64, 64, 4, 3)}
_SETTINGS: dict = {}  # (head_dim, config, density) -> (constexprs, options) of a launch

if HAVE_TRITON:
    _SSA = tl.constexpr(SSA)
    _SKIP = tl.constexpr(SKIP)

    @triton.jit
    def _blocks(q, k_base, v_base, sks, svs, m_i, l_i, acc, offs_m, offs_n, offs_d, lo, hi, S_LEN,
                SINK, LOCAL, is_ssa, qk_scale, BLOCK_N: tl.constexpr, MASKED: tl.constexpr):
        """Online softmax over key blocks [lo, hi); MASKED evaluates the token rule of the head's mode."""
        for j in range(lo, hi):
            offs_k = j * BLOCK_N + offs_n
            if MASKED:
                inside = offs_k[:, None] < S_LEN
                k = tl.load(k_base + offs_k[:, None].to(tl.int64) * sks + offs_d[None, :], mask=inside, other=0.0)
                v = tl.load(v_base + offs_k[:, None].to(tl.int64) * svs + offs_d[None, :], mask=inside, other=0.0)
            else:  # below the query block: every key exists
                k = tl.load(k_base + offs_k[:, None].to(tl.int64) * sks + offs_d[None, :])
                v = tl.load(v_base + offs_k[:, None].to(tl.int64) * svs + offs_d[None, :])
            s = tl.dot(q, tl.trans(k)) * qk_scale
            if MASKED:
                kk = offs_k[None, :]
                qq = offs_m[:, None]
                keep = (kk <= qq) & ((kk < SINK) | (kk > qq - LOCAL) | (is_ssa == 0))
                s = tl.where(keep, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing kept yet stays at 0
            p = tl.math.exp2(s - m_safe[:, None])
            alpha = tl.math.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        return m_i, l_i, acc

    @triton.jit
    def _fa_ssa_fwd(Q, K, V, O, MODES, DENS, ssa_density, sm_scale,
                    sqb, sqh, sqs, skb, skh, sks, svb, svh, svs, sob, soh, sos,
                    HQ, HK, S_LEN, NQ, NK, SINK, LOCAL,
                    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    WRITE_DENS: tl.constexpr):
        pid_m = NQ - 1 - tl.program_id(0)  # heaviest (last) query blocks first
        pid_bh = tl.program_id(1)
        b = pid_bh // HQ
        h = pid_bh % HQ
        kvh = h // (HQ // HK)
        mode = tl.load(MODES + b * HK + kvh)
        is_ssa = (mode == _SSA).to(tl.int32)
        run = (mode != _SKIP).to(tl.int32)  # a skipped head reads no key and writes nothing
        if WRITE_DENS:  # one program per (row, KV head) stores the head's kept fraction of pairs
            if (tl.program_id(0) == 0) & (h % (HQ // HK) == 0):
                tl.store(DENS + b * HK + kvh, tl.where(is_ssa == 1, ssa_density, 1.0))
        r0 = pid_m * BLOCK_M
        offs_m = r0 + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        q = tl.load(Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh + offs_m[:, None].to(tl.int64) * sqs
                    + offs_d[None, :], mask=offs_m[:, None] < S_LEN, other=0.0)
        k_base = K + b.to(tl.int64) * skb + kvh.to(tl.int64) * skh
        v_base = V + b.to(tl.int64) * svb + kvh.to(tl.int64) * svh
        qk_scale = sm_scale * 1.4426950408889634
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)

        diag_lo = (r0 // BLOCK_N) * run
        diag_hi = tl.minimum(tl.cdiv(r0 + BLOCK_M, BLOCK_N), NK) * run
        # SSA: the first block with a key in row r0's window, the first block inside every row's window,
        # and the sink blocks below the window (FA: all zero, so `inner` is every block below the diagonal).
        w_lo = tl.minimum(tl.maximum(r0 - LOCAL + 1, 0) // BLOCK_N, diag_lo) * is_ssa
        w_full = tl.minimum(tl.maximum(tl.cdiv(tl.maximum(r0 + BLOCK_M - LOCAL, 0), BLOCK_N), w_lo), diag_lo) * is_ssa
        sink_hi = tl.minimum(tl.cdiv(SINK, BLOCK_N), w_lo) * is_ssa

        m_i, l_i, acc = _blocks(q, k_base, v_base, sks, svs, m_i, l_i, acc, offs_m, offs_n, offs_d, 0, sink_hi,
                                S_LEN, SINK, LOCAL, is_ssa, qk_scale, BLOCK_N, True)
        m_i, l_i, acc = _blocks(q, k_base, v_base, sks, svs, m_i, l_i, acc, offs_m, offs_n, offs_d, w_lo, w_full,
                                S_LEN, SINK, LOCAL, is_ssa, qk_scale, BLOCK_N, True)
        m_i, l_i, acc = _blocks(q, k_base, v_base, sks, svs, m_i, l_i, acc, offs_m, offs_n, offs_d, w_full, diag_lo,
                                S_LEN, SINK, LOCAL, is_ssa, qk_scale, BLOCK_N, False)
        m_i, l_i, acc = _blocks(q, k_base, v_base, sks, svs, m_i, l_i, acc, offs_m, offs_n, offs_d, diag_lo, diag_hi,
                                S_LEN, SINK, LOCAL, is_ssa, qk_scale, BLOCK_N, True)

        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        o_ptrs = O + b.to(tl.int64) * sob + h.to(tl.int64) * soh + offs_m[:, None].to(tl.int64) * sos + offs_d[None, :]
        tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=offs_m[:, None] < S_LEN * run)  # no row when skipped


_LAUNCH = Launch(sys.modules[__name__], "_fa_ssa_fwd")


def supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Shapes this kernel runs: a causal prefill (q and k of one length), head_dim 64 or 128, GQA, the last
    stride of q, k and v 1."""
    return (HAVE_TRITON and q.shape[2] == k.shape[2] and q.shape[-1] in CONFIGS and q.shape[1] % k.shape[1] == 0
            and q.stride(-1) == 1 and k.stride(-1) == 1 and v.stride(-1) == 1)


def fa_ssa_prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, modes: torch.Tensor, sink: int, local: int,
                   scale: float, config: tuple[int, int, int, int] | None = None,
                   ssa_density: float | None = None):
    """Causal prefill attention [b, hq, s, d] with every KV head FA or SSA, no padding.

    q [b, hq, s, d], k / v [b, hk, s, d] in any strides with the last one 1 (GQA: never repeated);
    modes [b, hk] int on q's device, FA or SSA, or SKIP for a head whose output another kernel writes
    (anything else runs as FA). It is read by the kernel, not by the host. The output is a [b, s, hq, d]
    buffer seen as [b, hq, s, d], so the model's transpose back to [b, s, hq * d] costs no copy.
    config: (BLOCK_M, BLOCK_N, num_warps, num_stages).
    ssa_density given: returns (output, density [b, hk] fp32), each head's kept fraction of the causal
    pairs (1 for FA, ssa_density for SSA) written by the same launch.
    """
    if not HAVE_TRITON:
        raise RuntimeError("the fused FA/SSA prefill kernel needs triton")
    d = q.shape[-1]
    if not supported(q, k, v):
        raise ValueError(f"fa_ssa_prefill runs q [b, hq, s, d] and k, v [b, hk, s, d] of one length with head_dim "
                         f"in {sorted(CONFIGS)} and the last stride 1; got q {list(q.shape)}, k {list(k.shape)}; "
                         "hybrid_prefill's backend 'auto' or 'flex' runs other shapes")
    bm, bn, warps, stages = config or CONFIGS[d]
    if bm % bn:
        raise ValueError(f"BLOCK_M={bm} must be a multiple of BLOCK_N={bn}")
    return launch(q, k, v, modes, sink, local, scale, (bm, bn, warps, stages), ssa_density)


def _settings(d: int, config, density: bool) -> tuple[dict, dict]:
    """The launch's constexprs and options, made once per (head_dim, config, density): every layer launches."""
    key = (d, config, density)
    if key not in _SETTINGS:
        bm, bn, warps, stages = config
        _SETTINGS[key] = (dict(HEAD_DIM=d, BLOCK_M=bm, BLOCK_N=bn, WRITE_DENS=density),
                          dict(num_warps=warps, num_stages=stages))
    return _SETTINGS[key]


def launch(q, k, v, modes, sink: int, local: int, scale: float, config, ssa_density: float | None = None):
    """fa_ssa_prefill on arguments already checked (hybrid_prefill checks them once): a small model's
    prefill is bound by the host, and every layer calls this."""
    b, hq, s, d = q.shape
    hk = k.shape[1]
    bm, bn = config[0], config[1]
    # [b, s, hq, d] memory seen as [b, hq, s, d], in one op
    out = torch.empty_strided((b, hq, s, d), (s * hq * d, d, hq * d, 1), dtype=q.dtype, device=q.device)
    if modes.device != q.device or modes.dtype not in (torch.int32, torch.int64) or not modes.is_contiguous():
        modes = modes.to(device=q.device, dtype=torch.int64).contiguous()
    dens = torch.empty(b, hk, dtype=torch.float32, device=q.device) if ssa_density is not None else out
    nq, nk = -(-s // bm), -(-s // bn)  # not triton.cdiv: a constexpr function, microseconds a call on the host
    qb, qh, qs, _ = q.stride()
    kb, kh, ks, _ = k.stride()
    vb, vh, vs, _ = v.stride()
    consts, options = _settings(d, config, ssa_density is not None)
    _LAUNCH((nq, b * hq), (q, k, v, out, modes, dens),
            (float(ssa_density or 0.0), scale, qb, qh, qs, kb, kh, ks, vb, vh, vs, s * hq * d, d, hq * d, hq, hk, s,
             nq, nk, sink, local), consts, options)
    return (out, dens) if ssa_density is not None else out
