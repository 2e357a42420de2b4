"""AttentionRouter: pooled pre-RoPE keys -> task MLP -> router MLP -> one logit per KV head.

A positive logit means "sparse" (r = 1), the paper's convention. With norm="standardize" the pooled
keys are standardised per (KV head, channel) with statistics measured on training prompts, and a
learned per-head bias is added to the logit (docs/training.md says why: the part of the pooled keys that
varies between prompts is a small fraction of their norm).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .config import ROUTER_NORMS
from .attention.kernels import router as router_kernel
from .attention.masks import mode_ids


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
    """One per layer, shared by its KV heads; about 16 d^2 parameters (0.26 M at d = 128).

    norm="none" is the paper's router. norm="standardize" (needs kv_heads) adds the buffers
    input_mean / input_std [kv_heads, d], set by `calibrate` (identity until then), and the parameter
    head_bias [kv_heads].
    """

    def __init__(self, head_dim: int, hidden_mult: int = 4, pool_tokens: int = 100, kv_heads: int | None = None,
                 norm: str = "none"):
        super().__init__()
        if norm not in ROUTER_NORMS:
            raise ValueError(f"router norm {norm!r} is not known; use one of {ROUTER_NORMS}")
        hidden = hidden_mult * head_dim
        self.pool_tokens = pool_tokens
        self.norm = norm
        self.task = nn.Sequential(nn.Linear(head_dim, hidden), nn.SiLU(), nn.Linear(hidden, head_dim))
        self.router = nn.Sequential(nn.Linear(head_dim, hidden), nn.SiLU(), nn.Linear(hidden, head_dim),
                                    nn.SiLU(), nn.Linear(head_dim, 1))
        if norm == "standardize":
            if not kv_heads or kv_heads < 1:
                raise ValueError("norm='standardize' needs kv_heads, the number of KV heads the router serves")
            self.register_buffer("input_mean", torch.zeros(kv_heads, head_dim))
            self.register_buffer("input_std", torch.ones(kv_heads, head_dim))
            self.head_bias = nn.Parameter(torch.zeros(kv_heads))
        self.tau = 1.0  # Gumbel-sigmoid temperature; the trainer sets it from a TemperatureSchedule

    def forward(self, keys: torch.Tensor, valid: torch.Tensor | None = None, shift: float = 0.0,
                modes: tuple[int, int] | None = None):
        """keys [b, s, h, d] -> (logits [b, h] fp32, decisions r [b, h]): what a prefill routes with.

        shift (inference only) moves the decision threshold: r = 1[logit + shift > 0], so a positive
        shift sends more heads to the sparse mode (`elastic_attention.sparsity_bias`).
        modes (sparse mode id, kept mode id): also return the decisions as mode ids [b, h] int64.
        Inference on CUDA without padding runs as one Triton kernel (attention/kernels/router.py).
        """
        if valid is None and keys.is_cuda and not self.training and not torch.is_grad_enabled():
            tensors = router_kernel.fused_tensors(self, keys)
            if tensors is not None:
                return router_kernel.route_fused(self, keys, shift, tensors, modes)
        logits = self.logits(keys, valid)
        r = self.decide(logits if self.training or not shift else logits + shift)
        return (logits, r) if modes is None else (logits, r, mode_ids(r, *modes))

    def logits(self, keys: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """keys [b, s, h, d] (after k_proj / k-norm, before RoPE) -> logits [b, h] (fp32)."""
        return self.mlp(boundary_pool(keys, valid, self.pool_tokens))

    def mlp(self, pooled: torch.Tensor) -> torch.Tensor:
        """pooled keys [b, h, d] (fp32) -> logits [b, h] (fp32)."""
        if self.norm == "standardize":
            pooled = (pooled - self.input_mean.float()) / self.input_std.float()
        pooled = pooled.to(self.task[0].weight.dtype)
        logits = self.router(self.task(pooled)).squeeze(-1).float()
        return logits + self.head_bias.float() if self.norm == "standardize" else logits

    @torch.no_grad()
    def calibrate(self, pooled: torch.Tensor) -> None:
        """Set the standardisation from pooled keys [n, kv_heads, d] of n prompts (n >= 2)."""
        if self.norm != "standardize":
            raise ValueError(f"this router has norm={self.norm!r}: only norm='standardize' routers are calibrated")
        if pooled.ndim != 3 or tuple(pooled.shape[1:]) != tuple(self.input_mean.shape) or pooled.shape[0] < 2:
            raise ValueError(f"calibration needs pooled keys [n >= 2, {', '.join(map(str, self.input_mean.shape))}], "
                             f"got {list(pooled.shape)}")
        pooled = pooled.double()
        self.input_mean.copy_(pooled.mean(0))
        # The floor keeps a channel that never varies on the calibration prompts from blowing up others.
        std = pooled.std(0)
        self.input_std.copy_(std.clamp(min=max(1e-3 * std.max().item(), 1e-6)))

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
