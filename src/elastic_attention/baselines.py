"""Static hybrids: rank heads by the retrieval score, keep the top (1 - MSR) of them full."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .control import force_mode
from .passkey import passkey_samples
from .integrations.hf import attach, detach, runtime_of


@torch.no_grad()
def retrieval_scores(model, tokenizer, samples: int = 12, length: int = 2048, seed: int = 1234,
                     progress: bool = True, cache: bool = False) -> torch.Tensor:
    """Retrieval-head score of every KV head, [layers, kv_heads] (Wu et al. 2024, method.md section 7).

    For each passkey prompt, the attention mass the last token puts on the needle's tokens under
    full attention, averaged over the query heads of a KV group and over the prompts. The model is
    attached for the measurement if it has no routers.

    cache=True reads the scores from `scores_cache_path` when a run with the same weights, prompts and
    dtype wrote them, and writes them there otherwise (the CLI and eval do: scoring takes 20-70 s on a CPU).
    """
    prompts = passkey_samples(tokenizer, length, samples, seed)  # built once: they key the cache too
    path = scores_cache_path(model, tokenizer, samples, length, seed, prompts) if cache else None
    if path is not None and path.is_file():
        try:
            scores = torch.tensor(json.loads(path.read_text())["scores"], dtype=torch.float32)
            if tuple(scores.shape) == _head_shape(model):
                return scores
        except (OSError, ValueError, KeyError, TypeError):
            pass  # an unreadable cache file is recomputed and overwritten
    scores = _measure(model, prompts, progress)
    if path is not None:
        from .adapter import _atomic_write

        text = json.dumps({"samples": samples, "length": length, "seed": seed, "scores": scores.tolist()})
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(path, lambda f: Path(f).write_text(text + "\n"))
        except OSError:
            pass  # a read-only cache never fails the run
    return scores


def scores_cache_path(model, tokenizer, samples: int = 12, length: int = 2048, seed: int = 1234,
                      prompts=None) -> Path:
    """Where retrieval_scores(..., cache=True) keeps its scores: under the model cache directory, named by
    a hash of the model's weights (a strided sample of every backbone tensor), dtype and device type, and
    of the scoring prompts' tokens (so the tokenizer, samples, length and seed count too). prompts: those
    prompts when the caller has built them already."""
    from .models import cache_root

    digest = hashlib.sha256(b"retrieval-scores v1")
    for name, p in model.named_parameters():
        if "elastic_router" in name:
            continue
        flat = p.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 256)][:256].float().cpu()
        digest.update(f"{name}|{list(p.shape)}|{p.dtype}|{p.device.type}".encode())
        digest.update(sample.numpy().tobytes())
    for s in prompts if prompts is not None else passkey_samples(tokenizer, length, samples, seed):
        digest.update(json.dumps([s.input_ids, s.needle_span]).encode())
    return cache_root() / "retrieval-scores" / f"{model.config.model_type}-{digest.hexdigest()[:20]}.json"


def _head_shape(model) -> tuple[int, int]:
    cfg = model.config
    return cfg.num_hidden_layers, cfg.num_key_value_heads


def _measure(model, prompts, progress) -> torch.Tensor:
    attached_here = getattr(model, "elastic_runtime", None) is None
    if attached_here:
        attach(model)
    rt = runtime_of(model)
    device = next(model.parameters()).device
    total = torch.zeros(rt.num_layers, rt.kv_heads)
    try:
        rt.capture_last_row = True
        with force_mode(model, "full"):
            for s in tqdm(prompts, desc="retrieval scores", disable=not progress):
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
    return total / len(prompts)


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
