"""AttentionRouter: pooled pre-RoPE keys -> task MLP -> router MLP -> one logit per KV head.

A positive logit means "sparse" (r = 1), the paper's convention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .router_kernel import fused_supported, route_fused


def boundary_pool(keys: torch.Tensor, valid: torch.Tensor | None, n: int) -> torch.Tensor:
    """Mean of the first n and the last n real tokens (all of them if fewer than 2n).

    keys: [b, s, h, d]; valid: [b, s] bool (False = padding) or None. Returns [b, h, d] in fp32.
    Instructions sit at the start of a prompt and the question at its end: the middle is noise.
    """
    b, s = keys.shape[:2]
    if s == 0:
        raise ValueError("a prompt in the batch has no tokens: routing needs at least one")
    if valid is None:  # every token real: two slices, no host sync
        edges = keys if s <= 2 * n else torch.cat((keys[:, :n], keys[:, -n:]), 1)
        return edges.mean(1, dtype=torch.float32)
    rank = valid.to(torch.int64).cumsum(-1)  # 1-based among real tokens
    count = rank[:, -1:]
    if (count == 0).any():
        raise ValueError("a prompt in the batch has no tokens (all padding): routing needs at least one")
    take = valid & ((rank <= n) | (rank > count - n))
    weights = take.to(torch.float32) / take.sum(-1, keepdim=True)
    return torch.einsum("bs,bshd->bhd", weights, keys.float())


def gumbel_noise(shape, device, generator: torch.Generator | None = None, eps: float = 1e-10):
    u = torch.rand(shape, device=device, generator=generator)
    return -torch.log(-torch.log(u + eps) + eps)


class AttentionRouter(nn.Module):
    """One per layer, shared by its KV heads; about 16 d^2 parameters (0.26 M at d = 128)."""

    def __init__(self, head_dim: int, hidden_mult: int = 4, pool_tokens: int = 100):
        super().__init__()
        hidden = hidden_mult * head_dim
        self.pool_tokens = pool_tokens
        self.task = nn.Sequential(nn.Linear(head_dim, hidden), nn.SiLU(), nn.Linear(hidden, head_dim))
        self.router = nn.Sequential(nn.Linear(head_dim, hidden), nn.SiLU(), nn.Linear(hidden, head_dim),
                                    nn.SiLU(), nn.Linear(head_dim, 1))
        self.tau = 1.0  # Gumbel-sigmoid temperature; the trainer sets it from a TemperatureSchedule

    def forward(self, keys: torch.Tensor, valid: torch.Tensor | None = None):
        """keys [b, s, h, d] -> (logits [b, h] fp32, decisions r [b, h]): what a prefill routes with.

        Inference on CUDA without padding runs as one Triton kernel (router_kernel.py).
        """
        if (valid is None and keys.is_cuda and not self.training and not torch.is_grad_enabled()
                and fused_supported(self, keys)):
            return route_fused(self, keys)
        logits = self.logits(keys, valid)
        return logits, self.decide(logits)

    def logits(self, keys: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """keys [b, s, h, d] (after k_proj / k-norm, before RoPE) -> logits [b, h] (fp32)."""
        return self.mlp(boundary_pool(keys, valid, self.pool_tokens))

    def mlp(self, pooled: torch.Tensor) -> torch.Tensor:
        """pooled keys [b, h, d] (fp32) -> logits [b, h] (fp32)."""
        pooled = pooled.to(self.task[0].weight.dtype)
        return self.router(self.task(pooled)).squeeze(-1).float()

    def decide(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training: straight-through Gumbel-sigmoid, values in {0, 1} whose gradient is that of the
        soft sample. Eval: hard, noise-free decisions 1[logit > 0]. Returns float [b, h]."""
        if not self.training:
            return (logits > 0).float()
        g = gumbel_noise(logits.shape, logits.device, generator)
        soft = torch.sigmoid((logits + g) / self.tau)
        hard = (soft > 0.5).float()
        # (hard - s) + s is exact in floating point (Sterbenz), so r is exactly 0 or 1 in value;
        # (hard + s) - s would round, giving r = 0.99999994 for some s.
        return hard - soft.detach() + soft


@dataclass
class TemperatureSchedule:
    """Gumbel-sigmoid temperature against training progress p in [0, 1].

    "exp": max(tau_min, tau_init * exp(-rate * p)) (the paper); "cosine": tau_init -> tau_min over
    the first `cosine_span` of training, then flat (the public reference code); "constant": tau_init.
    """

    kind: str = "exp"
    tau_init: float = 1.5
    tau_min: float = 1.0
    rate: float = 0.6
    cosine_span: float = 0.6

    def __post_init__(self):
        if self.kind not in ("exp", "cosine", "constant"):
            raise ValueError(f"unknown temperature schedule {self.kind!r}; use 'exp', 'cosine' or 'constant'")
        if self.tau_init <= 0 or self.tau_min <= 0:
            raise ValueError(f"temperatures must be positive (tau_init={self.tau_init}, tau_min={self.tau_min})")

    @classmethod
    def from_config(cls, config) -> "TemperatureSchedule":
        return cls(config.tau_schedule, config.tau_init, config.tau_min, config.tau_rate)

    def __call__(self, progress: float) -> float:
        p = min(max(float(progress), 0.0), 1.0)
        if self.kind == "constant":
            return self.tau_init
        if self.kind == "exp":
            return max(self.tau_min, self.tau_init * math.exp(-self.rate * p))
        t = min(p / self.cosine_span, 1.0)
        return self.tau_min + 0.5 * (self.tau_init - self.tau_min) * (1 + math.cos(math.pi * t))
