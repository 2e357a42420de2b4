"""Static gate: one input-independent learnable logit per KV head (the PruLong / DuoAttention baseline).

Trained by the same objective as the routers, but every prompt gets the same heads: the contrast
that shows what per-prompt routing adds. Saved like a router: elastic_config.json + gate.safetensors.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .adapter import read_config, write_config
from .integrations.hf import runtime_of
from .router import gumbel_noise

GATE_WEIGHTS = "gate.safetensors"


class StaticGate(nn.Module):
    """logits [layers, kv_heads]; positive = sparse. Training: straight-through Gumbel-sigmoid."""

    def __init__(self, num_layers: int, kv_heads: int, init: float = 0.0):
        super().__init__()
        self.logits = nn.Parameter(torch.full((num_layers, kv_heads), float(init)))
        self.tau = 1.0

    def decide(self, layer: int, batch: int, shift: float = 0.0) -> torch.Tensor:
        """[batch, kv_heads] decisions of one layer (the same for every row); shift moves the inference
        threshold like a router's (sparsity_bias)."""
        z = self.logits[layer].float().expand(batch, -1)
        if not self.training:
            return (z + shift > 0).float()
        soft = torch.sigmoid((z + gumbel_noise(z.shape, z.device)) / self.tau)
        return (soft > 0.5).float() - soft.detach() + soft

    def mask(self) -> torch.Tensor:
        """Bool [layers, kv_heads], True = sparse: usable with force_mode for inference."""
        return (self.logits.detach() > 0).cpu()


def use_gate(model, gate: StaticGate | None):
    """Route the attached model with `gate` instead of its routers (None: back to the routers)."""
    rt = runtime_of(model)
    if gate is not None and tuple(gate.logits.shape) != (rt.num_layers, rt.kv_heads):
        raise ValueError(f"gate shape {list(gate.logits.shape)} does not match the model's "
                         f"[layers, kv_heads] = {[rt.num_layers, rt.kv_heads]}")
    rt.gate = gate
    return model


def save_static_gate(model, gate: StaticGate, path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file({"logits": gate.logits.detach().float().cpu().contiguous()}, path / GATE_WEIGHTS)
    write_config(model, path)
    return path


def load_static_gate(model, path) -> StaticGate:
    """Load a gate saved by save_static_gate, checking it was trained for this model's shape."""
    path = Path(path)
    read_config(model, path, GATE_WEIGHTS, "static gate", "save_static_gate")
    logits = load_file(path / GATE_WEIGHTS)["logits"]
    gate = StaticGate(*logits.shape)
    gate.logits.data.copy_(logits)
    return gate.eval()
