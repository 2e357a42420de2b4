"""Sparsity measures of the last prefill: MSR and ESR (method.md section 4)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .integrations.hf import runtime_of


@dataclass
class RoutingStats:
    """decisions: [batch, layers, kv_heads] bool, True = sparse mode.
    msr: [batch] fraction of the L x H KV heads routed to the sparse mode.
    esr: [batch] mean over the last layer's KV heads of the fraction of causal (query, key) pairs
    pruned (0 for full heads, measured from the masks that ran).
    esr_all_layers: [batch] the same mean over every layer's heads."""

    decisions: torch.Tensor
    msr: torch.Tensor
    esr: torch.Tensor
    esr_all_layers: torch.Tensor
    logits: torch.Tensor | None = None  # [batch, layers, kv_heads] router logits, None when forced

    def summary(self, row: int = 0) -> str:
        return (f"MSR {self.msr[row]:.3f}  ESR {self.esr[row]:.3f} (last layer), "
                f"{self.esr_all_layers[row]:.3f} (all layers)")


def routing_stats(model) -> RoutingStats:
    """Decisions and sparsity of the model's last prefill."""
    layers = runtime_of(model).layers
    if any(s.decisions is None for s in layers):
        raise ValueError("no prefill has run yet: call the model on a prompt before routing_stats(model)")
    decisions = torch.stack([s.decisions.detach() > 0.5 for s in layers], dim=1).cpu()
    pruned = torch.stack([1 - s.density for s in layers], dim=1).cpu()  # [b, L, H]
    logits = None
    if all(s.logits is not None for s in layers):
        logits = torch.stack([s.logits.detach() for s in layers], dim=1).cpu()
    return RoutingStats(decisions=decisions, msr=decisions.float().mean(dim=(1, 2)),
                        esr=pruned[:, -1].mean(-1), esr_all_layers=pruned.mean(dim=(1, 2)), logits=logits)


def soft_msr(model) -> torch.Tensor:
    """[batch] MSR of the last prefill as a differentiable mean of the straight-through decisions."""
    layers = runtime_of(model).layers
    return torch.stack([s.decisions for s in layers], dim=1).mean(dim=(1, 2))
