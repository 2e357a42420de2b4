"""Greedy generation with separate prefill and decode timings."""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm


@dataclass
class Generation:
    tokens: list[int]  # generated tokens, the prompt excluded
    prefill_s: float
    decode_s: float


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cache_of(output, name: str):
    return output[name] if name in output else output["past_key_values"]


@torch.no_grad()
def greedy_generate(model, input_ids: torch.Tensor, max_new_tokens: int = 32, eos_token_id=None,
                    progress: bool = False) -> Generation:
    """Greedy decoding of one prompt (input_ids [1, s]); stops at `eos_token_id` (int or list)."""
    if input_ids.ndim != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"greedy_generate takes one prompt of shape [1, s], got {list(input_ids.shape)}")
    if input_ids.shape[1] == 0:
        raise ValueError("the prompt is empty: give at least one token")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be at least 1")
    stops = set([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []))
    device = input_ids.device
    _sync(device)
    start = time.perf_counter()
    out = model(input_ids=input_ids, use_cache=True)
    token = out.logits[:, -1].argmax(-1, keepdim=True)
    _sync(device)
    prefill = time.perf_counter() - start
    tokens = [token.item()]
    start = time.perf_counter()
    # transformers 5.24 renamed `past_key_values` to `cache` (the old name still works, with a warning).
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    cache = _cache_of(out, cache_arg)
    for _ in tqdm(range(max_new_tokens - 1), desc="decode", unit="tok", disable=not progress, leave=False):
        if tokens[-1] in stops:
            break
        out = model(input_ids=token, use_cache=True, **{cache_arg: cache})
        cache = _cache_of(out, cache_arg)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(token.item())
    _sync(device)
    if tokens[-1] in stops:
        tokens.pop()
    return Generation(tokens, prefill, time.perf_counter() - start)
