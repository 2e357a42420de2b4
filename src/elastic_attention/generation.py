"""Greedy generation with separate prefill and decode timings."""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .cache import ElasticCache
from .checks import context_length


@dataclass
class Generation:
    tokens: list[int]  # generated tokens, the prompt excluded
    prefill_s: float
    decode_s: float
    kv_bytes: int | None = None  # key/value bytes the cache held at the end
    kv_bytes_full: int | None = None  # what a plain cache holds for the same tokens


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cache_of(output, name: str):
    return output[name] if name in output else output["past_key_values"]


@torch.no_grad()
def greedy_generate(model, input_ids: torch.Tensor, max_new_tokens: int = 32, eos_token_id=None,
                    progress: bool = False, elastic_cache: bool = True) -> Generation:
    """Greedy decoding of one prompt (input_ids [1, s]); stops at `eos_token_id` (int or list).

    elastic_cache: on a model with routers attached, decode from an ElasticCache (SSA heads keep only
    their sink and window); False keeps transformers' plain cache (every head reads its full KV).
    """
    if input_ids.ndim != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"greedy_generate takes one prompt of shape [1, s], got {list(input_ids.shape)}")
    if input_ids.shape[1] == 0:
        raise ValueError("the prompt is empty: give at least one token")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be at least 1")
    limit = context_length(model.config)
    if limit is not None and input_ids.shape[1] > limit:
        raise ValueError(f"the prompt has {input_ids.shape[1]} tokens, more than the model's maximum "
                         f"(config.max_position_embeddings = {limit}); shorten the prompt")
    stops = set([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []))
    # transformers 5.24 renamed `past_key_values` to `cache` (the old name still works, with a warning).
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    first = {}
    if elastic_cache and getattr(model, "elastic_runtime", None) is not None:
        first[cache_arg] = ElasticCache(model)
    device = input_ids.device
    _sync(device)
    start = time.perf_counter()
    out = model(input_ids=input_ids, use_cache=True, **first)
    token = out.logits[:, -1].argmax(-1, keepdim=True)
    _sync(device)
    prefill = time.perf_counter() - start
    tokens = [token.item()]
    start = time.perf_counter()
    cache = _cache_of(out, cache_arg)
    for _ in tqdm(range(max_new_tokens - 1), desc="decode", unit="tok", disable=not progress, leave=False):
        if tokens[-1] in stops:
            break
        out = model(input_ids=token, use_cache=True, **{cache_arg: cache})
        cache = _cache_of(out, cache_arg)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(token.item())
    _sync(device)
    decode = time.perf_counter() - start
    if tokens[-1] in stops:
        tokens.pop()
    held, full = _kv_bytes(cache)
    return Generation(tokens, prefill, decode, held, full)


def _kv_bytes(cache) -> tuple[int | None, int | None]:
    """(held, plain) key/value bytes of the cache; a plain cache holds all it would."""
    if isinstance(cache, ElasticCache):
        return cache.kv_bytes(), cache.full_kv_bytes()
    tensors = [t for layer in getattr(cache, "layers", []) for t in (getattr(layer, "keys", None),
                                                                     getattr(layer, "values", None))]
    if not tensors or any(not isinstance(t, torch.Tensor) for t in tensors):
        return None, None
    held = sum(t.numel() * t.element_size() for t in tensors)
    return held, held
