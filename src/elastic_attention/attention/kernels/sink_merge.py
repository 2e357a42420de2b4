"""The sink half of an SSA head, folded into the window half's output in one pass.

A sliding-window kernel (cuDNN's diagonal band, cudnn_band.py) gives each query the softmax over its
window (q - local, q] as an output o and a log-sum-exp lse. The sink keys k < sink that lie outside
the window (q - k >= local) are the rest of the SSA rule. This kernel, per query tile, scores those
few keys, and writes softmax over window + sink: with M = max(lse, m_sink),

    out = (o * e^(lse - M) + sum_j e^(s_j - M) v_j) / (e^(lse - M) + sum_j e^(s_j - M)).

It reads o and writes the result in place (each program owns its tile), so a separate sink output
and merge pass (two more q-sized tensors through memory) are never needed. GQA: K/V are read through
the KV head h // groups. Checked against the exact reference in tests (GPU, and on CPU under
TRITON_INTERPRET=1).
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
    HAVE_TRITON = True
except ImportError:  # CPU-only installs
    HAVE_TRITON = False

BLOCK_M = 64

if HAVE_TRITON:
    @triton.jit
    def _sink_merge(Q, K, V, O, LSE, sm_scale,
                    sqb, sqh, sqs, skb, skh, sks, svb, svh, svs, sob, soh, sos, slb, slh, sls,
                    H, G, S_LEN, SINK, LOCAL,
                    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        hk = h // G
        if pid_m * BLOCK_M + BLOCK_M - 1 < LOCAL:  # the whole tile's window reaches back to key 0
            return
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        row_ok = rows < S_LEN
        q = tl.load(Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh + rows[:, None].to(tl.int64) * sqs
                    + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        key_ok = cols < SINK
        k = tl.load(K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh + cols[:, None] * sks + offs_d[None, :],
                    mask=key_ok[:, None], other=0.0)
        v = tl.load(V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh + cols[:, None] * svs + offs_d[None, :],
                    mask=key_ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k)) * sm_scale  # natural-log units, like the band's lse
        # sink keys the window has not already counted
        keep = key_ok[None, :] & ((rows[:, None] - cols[None, :]) >= LOCAL)
        s = tl.where(keep, s, float("-inf"))
        m_s = tl.max(s, 1)
        m_safe = tl.where(m_s == float("-inf"), 0.0, m_s)
        p = tl.exp(s - m_safe[:, None])
        o_ptrs = O + b.to(tl.int64) * sob + h.to(tl.int64) * soh + rows[:, None].to(tl.int64) * sos + offs_d[None, :]
        o = tl.load(o_ptrs, mask=row_ok[:, None], other=0.0).to(tl.float32)
        lse = tl.load(LSE + b.to(tl.int64) * slb + h.to(tl.int64) * slh + rows.to(tl.int64) * sls,
                      mask=row_ok, other=0.0)
        top = tl.maximum(lse, m_safe)
        w_band = tl.exp(lse - top)
        w_sink = tl.exp(m_safe - top)
        num = o * w_band[:, None] + tl.dot(p.to(v.dtype), v) * w_sink[:, None]
        den = w_band + tl.sum(p, 1) * w_sink
        tl.store(o_ptrs, (num / den[:, None]).to(O.dtype.element_ty), mask=row_ok[:, None])


def sink_merge(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
               sink: int, local: int, scale: float) -> None:
    """Fold the sink keys into a sliding-window result, in place.

    q [b, hq, s, d]; k, v [b, hk, s, d] (only the first `sink` keys are read); out [b, hq, s, d]: the
    window (q - local, q] attention, overwritten with the SSA result; lse [b, hq, s] fp32: the
    window's natural-log log-sum-exp of the scaled scores. Any strides with a contiguous last dim.
    """
    if not HAVE_TRITON:
        raise RuntimeError("sink_merge needs Triton (pip install triton)")
    b, hq, s, d = q.shape
    if sink <= 0 or s <= local:  # no query has a sink key outside its window
        return
    for name, t in (("q", q), ("k", k), ("v", v), ("out", out)):
        if t.stride(-1) != 1:
            raise ValueError(f"sink_merge needs {name} with a contiguous last dimension, got strides {t.stride()}")
    block_n = max(16, triton.next_power_of_2(min(sink, s)))
    grid = (triton.cdiv(s, BLOCK_M), b * hq)
    _sink_merge[grid](q, k, v, out, lse, scale,
                      *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3], *lse.stride()[:3],
                      hq, hq // k.shape[1], s, min(sink, s), local,
                      HEAD_DIM=d, BLOCK_M=BLOCK_M, BLOCK_N=block_n, num_warps=4)
