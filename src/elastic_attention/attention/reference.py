"""Exact masked attention in plain PyTorch: the ground truth every fast path is tested against."""

from __future__ import annotations

import torch


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                     scale: float) -> torch.Tensor:
    """softmax(q k^T * scale, masked) v, computed in fp32, returned in q's dtype.

    q: [b, hq, sq, d]; k, v: [b, hk, skv, d] with hq a multiple of hk (GQA); mask: bool,
    broadcastable to [b, hq, sq, skv], True = attend. Rows with no allowed key return zeros.
    """
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1).float()
    v = v.repeat_interleave(groups, dim=1).float()
    scores = torch.matmul(q.float(), k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    has_key = mask.any(-1, keepdim=True)
    # A fully masked row would give NaN (also in the backward pass): give it finite scores, then zero it.
    probs = torch.softmax(torch.where(has_key, scores, 0.0), dim=-1) * has_key
    return torch.matmul(probs, v).to(q.dtype)
