"""One entry point for hybrid attention: (q, k, v, per-head modes, mode masks) -> output."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .banded import ssa_banded_attention
from .masks import SSA, causal_allowed
from .reference import masked_attention

BACKENDS = ("sdpa", "reference")


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                   scale: float) -> torch.Tensor:
    """torch SDPA; same contract as `masked_attention` (mask None = plain causal)."""
    gqa = q.shape[1] != k.shape[1]
    if mask is None:
        sq, skv = q.shape[2], k.shape[2]
        if sq == skv or sq == 1:  # SDPA's is_causal aligns top-left: right only when sq == skv
            return F.scaled_dot_product_attention(q, k, v, is_causal=sq > 1, scale=scale, enable_gqa=gqa)
        mask = causal_allowed(q.shape[0], sq, skv, q.device)
    has_key = mask.any(-1, keepdim=True)
    if bool(has_key.all()):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)
    # SDPA returns NaN for a row with no allowed key: let such rows see everything, then zero them.
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask | ~has_key, scale=scale, enable_gqa=gqa)
    return out * has_key.to(out.dtype)


def attention(q, k, v, mask, scale, backend: str = "sdpa") -> torch.Tensor:
    """Masked attention [b, hq, sq, d]; mask bool broadcastable to [b, hq, sq, skv], None = causal."""
    if backend == "sdpa":
        return sdpa_attention(q, k, v, mask, scale)
    if backend == "reference":
        if mask is None:
            mask = causal_allowed(q.shape[0], q.shape[2], k.shape[2], q.device)
        return masked_attention(q, k, v, mask, scale)
    raise ValueError(f"unknown attention backend {backend!r}; use one of {BACKENDS}")


def hybrid_attention(q, k, v, modes: torch.Tensor, masks: dict, scale: float,
                     backend: str = "sdpa", ssa_window: tuple[int, int] | None = None) -> torch.Tensor:
    """Every KV head in its own mode, each head computed once.

    modes: [b, hk] ints (FA / SSA / XA); masks: mode -> bool mask [b, 1 or hq, sq, skv] or None
    (plain causal). Heads are gathered by mode per batch row (serial dispatch), so a mode's mask
    is shared by its heads instead of being expanded per head. ssa_window: (sink, local) runs SSA
    heads as `ssa_banded_attention` (SDPA on key bands; plain causal prefill only: sq == skv,
    nothing padded) without reading masks[SSA].
    """
    present = modes.unique().tolist()
    if len(present) == 1:
        return _mode_attention(present[0], q, k, v, masks, None, scale, backend, ssa_window)
    b, hq = q.shape[:2]
    groups = hq // k.shape[1]
    out = torch.empty_like(q)
    offsets = torch.arange(groups, device=q.device)
    for row in range(b):
        for mode in modes[row].unique().tolist():
            kv_idx = (modes[row] == mode).nonzero().flatten()
            q_idx = (kv_idx[:, None] * groups + offsets).flatten()
            out[row:row + 1, q_idx] = _mode_attention(mode, q[row:row + 1, q_idx], k[row:row + 1, kv_idx],
                                                      v[row:row + 1, kv_idx], masks, (row, q_idx), scale,
                                                      backend, ssa_window)
    return out


def _mode_attention(mode, q, k, v, masks, part, scale, backend, ssa_window) -> torch.Tensor:
    """The heads of one mode; part: (batch row, query-head indices) that q, k, v hold, None = all."""
    if mode == SSA and ssa_window is not None:
        return ssa_banded_attention(q, k, v, *ssa_window, scale)
    mask = masks[mode]
    if mask is not None and part is not None:
        row, q_idx = part
        mask = mask[row:row + 1, q_idx] if mask.shape[1] > 1 else mask[row:row + 1]
    return attention(q, k, v, mask, scale, backend)
