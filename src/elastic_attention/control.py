"""force_mode: override the router (full, all-sparse, or a static per-head mask); sparsity_bias: shift it."""

from __future__ import annotations

import math

import torch

from .integrations.hf import runtime_of

MODES = ("router", "full", "sparse")


class force_mode:
    """Set how heads are routed; takes effect at once and, used as a context manager, is undone on exit.

    mode: "router" (the routers decide, default), "full" (every head full attention), "sparse"
    (every head the config's sparse mode), or a bool tensor [layers, kv_heads], True = sparse
    (a static hybrid: False heads run the config's retrieval mode). A bool tensor [batch, layers,
    kv_heads] (for example `routing_stats(model).decisions`) gives each row of a batch its own heads
    and then only fits calls of that batch size.
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
        if tuple(mode.shape[-2:]) != shape or mode.ndim not in (2, 3):
            raise ValueError(f"a static mode mask must have shape [layers, kv_heads] = {list(shape)} or "
                             f"[batch, layers, kv_heads], got {list(mode.shape)}")
        if mode.dtype != torch.bool:
            raise ValueError(f"a static mode mask must be a bool tensor (True = sparse), got {mode.dtype}")
        return mode.clone()
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {MODES} or a bool tensor [layers, kv_heads]")
    return None if mode == "router" else mode


def check_sparsity_bias(value) -> float:
    """The bias as a float, or a ValueError that names the bad value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"sparsity bias {value!r} must be a finite number (0 = the trained router; positive = "
                         "sparser, negative = denser; the shipped router's logits are tens to hundreds)")
    return float(value)


class sparsity_bias:
    """Shift every router's decision threshold: a head goes sparse when logit + value > 0.

    value > 0 trades quality for speed (more sparse heads), value < 0 the reverse, without retraining;
    0 is the trained router. Takes effect at once for inference prefills (training ignores it) and, used
    as a context manager, is undone on exit. docs/training.md shows MSR and scores against the value.
    """

    def __init__(self, model, value: float):
        value = check_sparsity_bias(value)
        self.runtime = runtime_of(model)
        self.model = model
        self.previous = self.runtime.sparsity_bias
        self.runtime.sparsity_bias = value

    def __enter__(self):
        return self.model

    def __exit__(self, *exc):
        self.runtime.sparsity_bias = self.previous
        return False
