"""The training objective (method.md section 5): answer cross-entropy plus a Lagrangian on the MSR.

    L = CE + sum_k [ lambda1_k * mean_k(MSR - t_k) + lambda2_k * mean_k((MSR - t_k)^2) ]     ("signed", the paper)
    L = CE + sum_k [ lambda1_k * mean_k|MSR - t_k| + lambda2_k * mean_k((MSR - t_k)^2) ]     ("abs", the public code)

k runs over the constraints (a category, or a task with its own target); mean_k is over the samples
of constraint k in the global batch. The router minimises L; the multipliers maximise it (gradient
ascent), so a constraint that stays violated gets a growing price. Every term is a sum over samples
divided by counts of the global batch, so micro-batches and processes add their gradients exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .options import LAMBDA_SCHEDULES, PENALTIES  # noqa: F401 (re-exported, defined apart from torch)


class Lagrangian(nn.Module):
    """lambda1 [K] and lambda2 [K], one pair per constraint.

    "signed": lambda1 starts at 0: with the term lambda1 * (MSR - t), any other start pushes some
    constraint away from its target until ascent corrects the sign. "abs": both terms pull toward the
    target whatever the side, so both multipliers only grow while a constraint is violated; lambda1 starts
    U(0, 0.5) as in the public code. lambda2 starts U(0, 0.5) in both, so the quadratic term pulls toward
    the target from step 1.
    """

    def __init__(self, names: list[str], generator: torch.Generator | None = None, penalty: str = "signed"):
        super().__init__()
        if penalty not in PENALTIES:
            raise ValueError(f"penalty {penalty!r} is not known; use one of {PENALTIES}")
        self.names = list(names)
        self.penalty_kind = penalty
        self.lambda2 = nn.Parameter(torch.rand(len(names), generator=generator) * 0.5)
        start = torch.rand(len(names), generator=generator) * 0.5 if penalty == "abs" else torch.zeros(len(names))
        self.lambda1 = nn.Parameter(start)

    def penalty(self, msr: torch.Tensor, target: torch.Tensor, constraint: torch.Tensor,
                counts: torch.Tensor) -> torch.Tensor:
        """Sum over the given samples of their share of the Lagrangian term. counts [K]: samples of each
        constraint in the global batch."""
        d = msr - target
        linear = d.abs() if self.penalty_kind == "abs" else d
        weight = 1.0 / counts.to(msr.dtype).clamp(min=1)[constraint]
        return (weight * (self.lambda1[constraint] * linear + self.lambda2[constraint] * d * d)).sum()


def answer_ce(logits: torch.Tensor, input_ids: torch.Tensor, answer_mask: torch.Tensor) -> torch.Tensor:
    """Per-sample mean cross-entropy of the answer tokens, [b] in fp32.

    logits [b, K, V] are the last K positions' (logits_to_keep=K); position p predicts token p + 1.
    """
    b, s = input_ids.shape
    k = logits.shape[1]
    targets = input_ids[:, s - k + 1:]  # tokens predicted by positions s-k .. s-2
    mask = answer_mask[:, s - k + 1:]
    pred = logits[:, :-1].float()
    losses = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), targets.reshape(-1), reduction="none")
    losses = losses.view(b, -1) * mask
    return losses.sum(-1) / mask.sum(-1).clamp(min=1)
