"""How far the Lagrange multipliers can move: the trainer's optimiser and schedule on a violated constraint.

The multipliers are trained by AdamW with maximize=True (betas 0.9/0.95, no weight decay) and the routers'
schedule (20 % linear warmup, then cosine decay to 0). Adam's step is about lr whatever the size of the
gradient, so after N steps a multiplier has moved at most lr * sum(schedule) = 0.5 * lr * N, however
badly its constraint is violated. This script runs exactly that optimiser on one multiplier whose
constraint stays violated (MSR - target = -0.4, with Gumbel-like noise of std 0.1 per step) and prints
where lambda1 ends, and the price it puts on one KV head of the default model (lambda / (30 x 3 heads)),
next to the CE prices of heads measured by router_inputs.py.

python benchmarks/multiplier_dynamics.py   (instant; writes results/multiplier_dynamics.json)
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from elastic_attention.training.trainer import lr_factor  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
HEADS = 30 * 3  # the default model's KV heads


def run(lr: float, steps: int, schedule: str, penalty: str, violation: float = -0.4, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    lam = torch.nn.Parameter(torch.tensor([0.25 if penalty == "abs" else 0.0]))
    opt = torch.optim.AdamW([lam], lr=lr, betas=(0.9, 0.95), weight_decay=0.0, maximize=True)
    for step in range(steps):
        factor = lr_factor(step, steps, 0.2) if schedule == "cosine" else 1.0
        opt.param_groups[0]["lr"] = lr * factor
        d = violation + 0.1 * torch.randn(1, generator=g)
        term = lam * (d.abs() if penalty == "abs" else d)
        opt.zero_grad()
        term.sum().backward()
        opt.step()
    value = lam.item()
    return {"lr": lr, "steps": steps, "schedule": schedule, "penalty": penalty, "lambda1": value,
            "price_per_head": abs(value) / HEADS,
            "bound": lr * sum(lr_factor(s, steps, 0.2) for s in range(steps)) if schedule == "cosine" else lr * steps}


def main() -> None:
    rows = [run(lr, 300, schedule, penalty) for lr in (1e-3, 1e-2, 5e-2) for schedule in ("cosine", "constant")
            for penalty in ("signed", "abs")]
    print("| lambda lr | schedule | penalty | lambda1 after 300 steps | bound lr*sum(schedule) | "
          "price per head |lambda1|/90 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['lr']:g} | {r['schedule']} | {r['penalty']} | {r['lambda1']:+.3f} | {r['bound']:.3f} | "
              f"{r['price_per_head']:.4f} |")
    prices = RESULTS / "router_inputs.json"
    if prices.is_file():
        per_task = json.loads(prices.read_text()).get("prices", {}).get("per_task", {})
        if per_task:
            print("CE prices of heads (router_inputs.json, mean |dCE/dr| per task): "
                  + ", ".join(f"{t} {v['abs_mean']:.4f}" for t, v in per_task.items()))
    assert all(math.isfinite(r["lambda1"]) for r in rows)
    (RESULTS / "multiplier_dynamics.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
