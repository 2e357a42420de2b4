"""SSA prefill in O(s * (sink + local)): each chunk of queries attends to its key band and the sink.

Query i keeps the keys {j <= i : j < sink or j > i - local} (masks.ssa_mask on a plain causal
prompt). Run through a dense [s, s] mask, SSA costs as much as full attention. Here the queries run
in chunks [c0, c1); every key such a chunk keeps lies in its band [c0 - local + 1, c1) or among the
sink keys before that band, so one SDPA call per chunk scores chunk x (sink + local - 1 + chunk)
pairs under a small mask. Each row's softmax sees exactly its kept keys, so the result is exact.
Only the plain causal prefill (queries are the keys, nothing padded); other calls use masks.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Query rows per SDPA call. A chunk scores chunk x (sink + local - 1 + chunk) pairs and keeps at most
# chunk x (sink + local): smaller chunks waste fewer pairs, larger ones make more calls. One SSA layer of
# the default model at 4K tokens (sink 64, local 256, 1 thread, CPU time): chunks of 32 / 48 / 64 / 96 /
# 128 rows 86 / 78 / 75 / 78 / 78 ms; full causal SDPA 250 ms.
CHUNK = 64


def ssa_banded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sink: int, local: int,
                         scale: float, chunk: int = CHUNK) -> torch.Tensor:
    """Streaming attention (first `sink` keys + the last `local`, itself included) of a causal prefill.

    q [b, hq, s, d]; k, v [b, hk, s, d] with hq a multiple of hk (GQA). Output [b, hq, s, d] in q's
    dtype; SDPA accumulates in fp32. Same result as `masked_attention` with `ssa_mask(causal)`.
    """
    _check(q, k, v, sink, local, chunk)
    s = q.shape[2]
    gqa = q.shape[1] != k.shape[1]
    out = torch.empty_like(q)
    steady = None  # the mask of every full chunk past the sink (see _band_mask)
    for c0 in range(0, s, chunk):
        c1 = min(c0 + chunk, s)
        lo = max(c0 - local + 1, 0)  # first key in the window of the chunk's first query
        n_sink = min(sink, lo)  # sink keys inside the band are already among its keys
        repeats = c1 - c0 == chunk and lo >= sink
        mask = steady if repeats and steady is not None else _band_mask(c0, c1, lo, n_sink, sink, local, q)
        if repeats:
            steady = mask
        kb = torch.cat([k[:, :, :n_sink], k[:, :, lo:c1]], dim=2)
        vb = torch.cat([v[:, :, :n_sink], v[:, :, lo:c1]], dim=2)
        out[:, :, c0:c1] = F.scaled_dot_product_attention(q[:, :, c0:c1], kb, vb, attn_mask=mask, scale=scale,
                                                          enable_gqa=gqa)
    return out


def _band_mask(c0, c1, lo, n_sink, sink, local, q) -> torch.Tensor:
    """Additive mask [c1 - c0, n_sink + c1 - lo] of the rows c0..c1-1 over keys 0..n_sink-1, lo..c1-1.

    Additive in q's dtype, not bool: SDPA converts a bool mask on every call. Once lo >= sink, a full
    chunk's mask depends only on positions relative to the chunk (row a keeps every sink key and band
    keys a .. a + local - 1), so the caller builds it once; with that, the banded layer of the default
    model at 4K (1 thread) took 75 instead of 90 ms.
    """
    keys = torch.cat([torch.arange(n_sink, device=q.device), torch.arange(lo, c1, device=q.device)])
    rows = torch.arange(c0, c1, device=q.device)[:, None]
    keep = (keys <= rows) & ((keys < sink) | (keys > rows - local))  # every row keeps itself: no empty row
    return torch.zeros(keep.shape, dtype=q.dtype, device=q.device).masked_fill_(~keep, float("-inf"))


def _check(q, k, v, sink, local, chunk) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be 4-D [batch, heads, seq, head_dim], got shapes "
                         f"{list(q.shape)}, {list(k.shape)}, {list(v.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {list(k.shape)} and {list(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must agree in batch and head_dim, got {list(q.shape)} and {list(k.shape)}")
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"banded SSA is for a prefill (as many queries as keys), got {q.shape[2]} queries "
                         f"and {k.shape[2]} keys; use attention(...) with ssa_mask for other calls")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of key heads ({k.shape[1]})")
    for name, value in (("sink", sink), ("local", local), ("chunk", chunk)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name}={value!r} must be a positive integer")
