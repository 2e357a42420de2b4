"""One entry point for hybrid attention: (q, k, v, per-head masks) -> output, picking the backend."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .reference import masked_attention

BACKENDS = ("sdpa", "reference")


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                   scale: float) -> torch.Tensor:
    """torch SDPA with a boolean mask; same contract as `masked_attention`."""
    has_key = mask.any(-1, keepdim=True)
    # SDPA returns NaN for a row with no allowed key: let such rows see everything, then zero them.
    safe = mask | ~has_key
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=safe, scale=scale,
                                         enable_gqa=q.shape[1] != k.shape[1])
    return out * has_key.to(out.dtype)


def attention(q, k, v, mask, scale, backend: str = "sdpa") -> torch.Tensor:
    """Masked attention, [b, hq, sq, d] out. `backend` is one of BACKENDS."""
    if backend == "sdpa":
        return sdpa_attention(q, k, v, mask, scale)
    if backend == "reference":
        return masked_attention(q, k, v, mask, scale)
    raise ValueError(f"unknown attention backend {backend!r}; use one of {BACKENDS}")
