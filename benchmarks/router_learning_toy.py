"""Router learning on a toy: which training settings let routers tell two prompts apart.

A tiny random Llama (4 layers, 2 KV heads, head_dim 16) and two tasks whose prompts differ only in their
first line (tests/training_tools.instruction_records: 'copy' robust, 'find' sensitive; 300-character
bodies drawn alike). Targets 1.0 / 0.0. Each variant changes the paper's settings in one or more named
ways; after training, the held-out MSR of each task on 40 new prompts (noise-free routing) and the gap
between them (1.0 = perfect separation). Several seeds per variant.

python benchmarks/router_learning_toy.py [--steps 200 --seeds 3 --variants paper,standardize,...]
(CPU, about 15 s per run). Prints a table and writes results/router_learning_toy.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import tiny_model  # noqa: E402
from training_tools import TOY_MODEL, TOY_POOL, char_tokenizer, instruction_records, write_jsonl  # noqa: E402

import elastic_attention as ea  # noqa: E402
from elastic_attention.training import TrainConfig, train  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# name -> (ElasticConfig fields, TrainConfig fields), each the paper's settings with the named changes.
PAPER = ({"router_norm": "none"}, {"lr": 5e-4, "lambda_lr": 1e-3})
CHANGES = {
    "paper": ({}, {}),
    "lr5e-3": ({}, {"lr": 5e-3}),
    "lambda_lr5e-2": ({}, {"lambda_lr": 5e-2}),
    "lambda_constant": ({}, {"lambda_schedule": "constant"}),
    "abs": ({}, {"penalty": "abs"}),
    "abs+lr5e-3": ({}, {"penalty": "abs", "lr": 5e-3}),
    "lr5e-3+lambda_lr5e-2": ({}, {"lr": 5e-3, "lambda_lr": 5e-2}),
    "standardize": ({"router_norm": "standardize"}, {}),
    "standardize+lr5e-3": ({"router_norm": "standardize"}, {"lr": 5e-3}),
    "standardize+lr2e-2": ({"router_norm": "standardize"}, {"lr": 2e-2}),
    "standardize+abs": ({"router_norm": "standardize"}, {"penalty": "abs"}),
    "standardize+abs+lr5e-3": ({"router_norm": "standardize"}, {"penalty": "abs", "lr": 5e-3}),
    "standardize+lr5e-3+lambda_lr1e-2": ({"router_norm": "standardize"}, {"lr": 5e-3, "lambda_lr": 1e-2}),
    "standardize+lr5e-3+lambda_lr5e-2": ({"router_norm": "standardize"}, {"lr": 5e-3, "lambda_lr": 5e-2}),
    "standardize+lr5e-3+lambda_lr5e-2+abs": ({"router_norm": "standardize"},
                                             {"lr": 5e-3, "lambda_lr": 5e-2, "penalty": "abs"}),
    "standardize+lr5e-3+lambda_constant": ({"router_norm": "standardize"}, {"lr": 5e-3, "lambda_schedule": "constant"}),
    "standardize+lr5e-3+300steps": ({"router_norm": "standardize"}, {"lr": 5e-3, "steps": 300}),
    "standardize+lr5e-3+400steps": ({"router_norm": "standardize"}, {"lr": 5e-3, "steps": 400}),
    "standardize+lr5e-3+batch8": ({"router_norm": "standardize"}, {"lr": 5e-3, "batch_size": 8}),
    # The library's defaults (the shipped router's recipe), as tests/test_training.py runs them.
    "recipe+300steps": ({"router_norm": "standardize"}, {"lr": 5e-3, "lambda_lr": 5e-2, "steps": 300}),
}
VARIANTS = {name: (PAPER[0] | e, PAPER[1] | t) for name, (e, t) in CHANGES.items()}


def heldout_msr(model, tok, records) -> dict[str, float]:
    model.eval()
    msr: dict[str, list[float]] = {}
    with torch.no_grad():
        for r in records:
            model(torch.tensor([tok(r["prompt"], add_special_tokens=False)["input_ids"]]))
            msr.setdefault(r["task"], []).append(ea.routing_stats(model).msr.item())
    return {k: sum(v) / len(v) for k, v in msr.items()}


def run(variant: str, seed: int, steps: int, data: Path, held: list[dict], tok, tmp: Path, pool: int) -> dict:
    elastic, train_over = VARIANTS[variant]
    model = ea.attach(tiny_model("llama", seed=seed, **TOY_MODEL),
                      ea.ElasticConfig(sink=4, local=32, pool_tokens=pool, **elastic))
    cfg = dict(data=str(data), out=str(tmp / f"{variant}-{seed}"), steps=steps, max_len=384, batch_size=4,
               targets={"robust": 1.0, "sensitive": 0.0}, save_every=10**6, progress=False, seed=seed)
    start = time.time()
    summary = train(TrainConfig(**(cfg | train_over)), model, tok)
    msr = heldout_msr(model, tok, held)
    lam = summary["lagrangian"]
    return {"variant": variant, "pool_tokens": pool, "seed": seed, "steps": train_over.get("steps", steps),
            "seconds": time.time() - start, "heldout_msr": msr, "gap": msr["copy"] - msr["find"],
            "train_msr": {k: v["msr"] for k, v in summary["final"].items()},
            "lambda1": dict(zip(lam.names, lam.lambda1.tolist())),
            "lambda2": dict(zip(lam.names, lam.lambda2.tolist()))}


def input_separation(pool: int) -> list[dict]:
    """Per (layer, KV head) of the untrained toy: the largest per-channel gap between the two tasks' mean
    pooled keys, in units of the within-task spread (how clearly the router's input shows the first line)."""
    from elastic_attention.calibration import pooled_keys

    tok = char_tokenizer()
    model = ea.attach(tiny_model("llama", seed=0, **TOY_MODEL), ea.ElasticConfig(sink=4, local=32, pool_tokens=pool))
    records = instruction_records(40, 0)
    x = pooled_keys(model, [tok(r["prompt"], add_special_tokens=False)["input_ids"] for r in records])
    robust = torch.tensor([r["category"] == "robust" for r in records])
    rows = []
    for layer in range(x.shape[1]):
        for head in range(x.shape[2]):
            v = x[:, layer, head]
            within = torch.cat([v[robust] - v[robust].mean(0), v[~robust] - v[~robust].mean(0)]).std(0)
            ratio = ((v[robust].mean(0) - v[~robust].mean(0)).abs() / within).max().item()
            rows.append({"pool_tokens": pool, "layer": layer, "head": head, "gap_over_spread": ratio})
            print(f"pool {pool}, layer {layer}, KV head {head}: largest channel gap / within-task spread {ratio:.2f}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--pool-tokens", type=int, default=TOY_POOL,
                    help="router pooling N (default 20: the 14-character first line is most of the first 20 "
                         "tokens; at 100, layer 0's pooled keys barely see it)")
    ap.add_argument("--out", default=str(RESULTS / "router_learning_toy.json"))
    ap.add_argument("--inputs", action="store_true",
                    help="only measure how clearly each layer's pooled keys show the first line (no training)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.inputs:
        rows = [r for pool in (100, args.pool_tokens) for r in input_separation(pool)]
        (RESULTS / "router_learning_toy_inputs.json").write_text(json.dumps(rows, indent=1) + "\n")
        return
    tok = char_tokenizer()
    tmp = Path(tempfile.mkdtemp())
    data = write_jsonl(instruction_records(128, 0), tmp / "data.jsonl")
    held = instruction_records(40, 99)
    out = Path(args.out)
    chosen = args.variants.split(",")
    # Runs of other variants from earlier invocations stay in the file (one table for all).
    rows = [r for r in json.loads(out.read_text())["runs"]
            if (r["variant"], r["pool_tokens"]) not in {(v, args.pool_tokens) for v in chosen}] if out.is_file() else []
    for variant in chosen:
        for seed in range(args.seeds):
            rows.append(run(variant, seed, args.steps, data, held, tok, tmp, args.pool_tokens))
            r = rows[-1]
            print(f"{variant:24s} seed {seed}: held-out MSR copy {r['heldout_msr']['copy']:.2f} "
                  f"find {r['heldout_msr']['find']:.2f} gap {r['gap']:.2f} ({r['seconds']:.0f} s)", flush=True)
    print("\n| pool N | variant | steps | seeds | held-out MSR copy (robust) | find (sensitive) | gap, mean (min) |")
    print("|---|---|---|---|---|---|---|")
    for pool, variant in dict.fromkeys((r["pool_tokens"], r["variant"]) for r in rows):
        rs = [r for r in rows if r["variant"] == variant and r["pool_tokens"] == pool]
        mean = lambda key: sum(r["heldout_msr"][key] for r in rs) / len(rs)  # noqa: E731
        gaps = [r["gap"] for r in rs]
        print(f"| {pool} | {variant} | {rs[0]['steps']} | {len(rs)} | {mean('copy'):.2f} | {mean('find'):.2f} | "
              f"{sum(gaps) / len(gaps):.2f} ({min(gaps):.2f}) |")
    out.write_text(json.dumps({"command": "python benchmarks/router_learning_toy.py --steps N --seeds K "
                                          "--variants ...", "runs": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
