"""Static hybrids: rank heads by the retrieval score, keep the top (1 - MSR) of them full."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .control import force_mode
from .eval.passkey import passkey_samples
from .integrations.hf import attach, detach, runtime_of


@torch.no_grad()
def retrieval_scores(model, tokenizer, samples: int = 12, length: int = 2048, seed: int = 1234,
                     progress: bool = True) -> torch.Tensor:
    """Retrieval-head score of every KV head, [layers, kv_heads] (Wu et al. 2024, method.md section 7).

    For each passkey prompt, the attention mass the last token puts on the needle's tokens under
    full attention, averaged over the query heads of a KV group and over the prompts. The model is
    attached for the measurement if it has no routers.
    """
    attached_here = getattr(model, "elastic_runtime", None) is None
    if attached_here:
        attach(model)
    rt = runtime_of(model)
    device = next(model.parameters()).device
    total = torch.zeros(rt.num_layers, rt.kv_heads)
    try:
        rt.capture_last_row = True
        with force_mode(model, "full"):
            for s in tqdm(passkey_samples(tokenizer, length, samples, seed), desc="retrieval scores",
                          disable=not progress):
                model(input_ids=torch.tensor([s.input_ids], device=device), use_cache=False)
                a, b = s.needle_span
                for state in rt.layers:
                    mass = state.last_row[0, :, a:b].sum(-1).float().cpu()  # [hq]
                    total[state.layer_idx] += mass.view(rt.kv_heads, -1).mean(-1)
                    state.last_row = None
    finally:
        rt.capture_last_row = False
        if attached_here:
            detach(model)
    return total / samples


def static_mask(scores: torch.Tensor, msr: float) -> torch.Tensor:
    """Bool [layers, kv_heads], True = sparse: the top round((1 - msr) * L * H) heads by score stay full."""
    if not 0.0 <= msr <= 1.0:
        raise ValueError(f"msr={msr} must lie in [0, 1]")
    if scores.ndim != 2:
        raise ValueError(f"scores must be [layers, kv_heads], got shape {list(scores.shape)}")
    n_full = round((1.0 - msr) * scores.numel())
    sparse = torch.ones(scores.numel(), dtype=torch.bool)
    sparse[scores.flatten().argsort(descending=True)[:n_full]] = False
    return sparse.view_as(scores)
