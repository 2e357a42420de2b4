"""Gumbel temperature schedules compared on a toy problem (docs/training.md, "Temperature schedule").

Tiny random 2-layer Llama, two tasks whose prompts differ (letters vs digits) with targets 1.0 and 0.0;
after 30 and 60 steps, the held-out MSR gap between the tasks (higher = per-prompt routing learned).
python benchmarks/tau_schedule_toy.py   (CPU, a minute or two)
"""

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import tiny_model  # noqa: E402
from training_tools import char_tokenizer, two_task_records, write_jsonl  # noqa: E402

import elastic_attention as ea  # noqa: E402
from elastic_attention.training import TrainConfig, train  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    tok = char_tokenizer()
    tmp = Path(tempfile.mkdtemp())
    data = write_jsonl(two_task_records(64, 0), tmp / "data.jsonl")
    held = two_task_records(60, 99)
    gaps = {}
    for kind in ("exp", "cosine", "constant"):
        for seed in range(6):
            for steps in (30, 60):
                model = ea.attach(tiny_model("llama", seed=seed), ea.ElasticConfig(sink=2, local=4))
                train(TrainConfig(data=str(data), out=str(tmp / "out"), steps=steps, max_len=64, batch_size=4,
                                  lr=1e-2, lambda_lr=1e-2, targets={"robust": 1.0, "sensitive": 0.0},
                                  save_every=1000, progress=False, tau_schedule=kind, seed=seed), model, tok)
                model.eval()
                msr = {"lower": [], "digits": []}
                with torch.no_grad():
                    for r in held:
                        model(torch.tensor([tok(r["prompt"], add_special_tokens=False)["input_ids"]]))
                        msr[r["task"]].append(ea.routing_stats(model).msr.item())
                hi, lo = (sum(v) / len(v) for v in msr.values())
                gaps.setdefault(f"{kind}/{steps}", []).append(hi - lo)
    for name, v in gaps.items():
        print(f"{name:14s} mean held-out gap {sum(v) / len(v):.3f}  min {min(v):.3f}  {[round(x, 2) for x in v]}")


if __name__ == "__main__":
    main()
