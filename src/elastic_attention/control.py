"""force_mode: override the router (full, all-sparse, or a static per-head mask)."""

from __future__ import annotations

import torch

from .integrations.hf import runtime_of

MODES = ("router", "full", "sparse")


class force_mode:
    """Set how heads are routed; takes effect at once and, used as a context manager, is undone on exit.

    mode: "router" (the routers decide, default), "full" (every head full attention), "sparse"
    (every head the config's sparse mode), or a bool tensor [layers, kv_heads], True = sparse
    (a static hybrid: False heads run the config's retrieval mode).
    """

    def __init__(self, model, mode="router"):
        self.runtime = runtime_of(model)
        self.model = model
        self.previous = self.runtime.forced
        self.runtime.forced = _check(mode, self.runtime)

    def __enter__(self):
        return self.model

    def __exit__(self, *exc):
        self.runtime.forced = self.previous
        return False


def _check(mode, rt):
    if isinstance(mode, torch.Tensor):
        shape = (rt.num_layers, rt.kv_heads)
        if tuple(mode.shape) != shape:
            raise ValueError(f"a static mode mask must have shape [layers, kv_heads] = {list(shape)}, "
                             f"got {list(mode.shape)}")
        if mode.dtype != torch.bool:
            raise ValueError(f"a static mode mask must be a bool tensor (True = sparse), got {mode.dtype}")
        return mode.clone()
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {MODES} or a bool tensor [layers, kv_heads]")
    return None if mode == "router" else mode
