"""Can the routers' input tell a needle hidden in natural text from that text, and how does it depend on N?

The shipped router misreads pass-key and multi-key prompts whose haystack is natural text (prose, code)
as robust text (benchmarks/router_head_choice.py --haystack). Its input is the mean of the first N and
last N pre-RoPE keys (boundary pooling, N = pool_tokens = 100). This measures, on the default model
(CPU, fp32), how well that input separates needle prompts with a natural-text haystack from robust
prompts of the same text (prose / code continuation, topic ending), for several N: leave-one-out
nearest-centroid accuracy per layer on standardised features, and over all layers together.

    python benchmarks/router_pool_width.py [--length 1024] [--per-task 12] [--widths 4,8,20,50,100]

Prints a table and writes JSON (benchmarks/results/router_pool_width.json).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

import elastic_attention as ea
from elastic_attention.eval.runner import build_samples
from elastic_attention.integrations.hf import runtime_of
from elastic_attention.models import load_default_model

NEEDLE = ("passkey", "multikey_needle")
ROBUST = ("prose_continuation", "code_continuation", "topic_ending")
FILLER = "The grass is green"  # the filler haystack, which the router already reads right


def edge_keys(model, ids: list[int], widest: int) -> list[torch.Tensor]:
    """Per layer [s_edge, kv_heads, d]: the first and last `widest` pre-RoPE keys the router would pool."""
    rt = runtime_of(model)
    grabbed = {}

    def hook(layer):
        def grab(module, args):
            keys = args[0][0].float()
            grabbed[layer] = keys if keys.shape[0] <= 2 * widest else torch.cat([keys[:widest], keys[-widest:]])
        return grab

    handles = [s.router.register_forward_pre_hook(hook(i)) for i, s in enumerate(rt.layers)]
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([ids]), use_cache=False, logits_to_keep=1)
    finally:
        for h in handles:
            h.remove()
    return [grabbed[i] for i in range(len(rt.layers))]


def pool(edges: torch.Tensor, n: int) -> torch.Tensor:
    """Boundary pooling at width n (router.boundary_pool) from the kept edges: their first and last n rows
    are the prompt's first and last n tokens."""
    return edges.mean(0) if edges.shape[0] <= 2 * n else torch.cat([edges[:n], edges[-n:]]).mean(0)


def loo_centroid(x: torch.Tensor, y: torch.Tensor) -> float:
    """Leave-one-out nearest-centroid accuracy of features x [n, f] (standardised without the held-out one)."""
    right = 0
    for i in range(len(y)):
        keep = torch.arange(len(y)) != i
        mu, sd = x[keep].mean(0), x[keep].std(0) + 1e-6
        z, zi = (x[keep] - mu) / sd, (x[i] - mu) / sd
        dist = [((zi - z[y[keep] == c].mean(0)) ** 2).sum() for c in (0, 1)]
        right += int(torch.stack(dist).argmin().item() == y[i].item())
    return right / len(y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--per-task", type=int, default=12)
    ap.add_argument("--widths", default="4,8,20,50,100")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "router_pool_width.json"))
    args = ap.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    widest = max(widths)
    model, tok = load_default_model()
    ea.load_router(model)
    prompts, labels, tasks = [], [], []
    for task in NEEDLE + ROBUST:
        # needle tasks: draw more and keep the natural-text haystacks only
        samples = build_samples(tok, task, args.length, args.per_task * (3 if task in NEEDLE else 1), 0)
        if task in NEEDLE:
            samples = [s for s in samples if tok.decode(s.input_ids).count(FILLER) <= 3][:args.per_task]
        for s in samples:
            prompts.append(s.input_ids)
            labels.append(1 if task in NEEDLE else 0)
            tasks.append(task)
    start = time.time()
    edges = [edge_keys(model, ids, widest) for ids in tqdm(prompts, desc="prompts")]
    y = torch.tensor(labels)
    layers = len(edges[0])
    rows = []
    for n in widths:
        per_layer = []
        feats_all = []
        for layer in range(layers):
            x = torch.stack([pool(e[layer], n).flatten() for e in edges])
            feats_all.append(x)
            per_layer.append(loo_centroid(x, y))
        rows.append({"pool_tokens": n, "mean_layer_acc": sum(per_layer) / layers, "best_layer_acc": max(per_layer),
                     "all_layers_acc": loo_centroid(torch.cat(feats_all, 1), y), "per_layer": per_layer})
    print(f"{len(prompts)} prompts of {args.length} tokens: needle in natural text "
          f"({sum(labels)}: {', '.join(NEEDLE)}) against robust text ({len(labels) - sum(labels)}: {', '.join(ROBUST)}); "
          f"leave-one-out nearest centroid; {time.time() - start:.0f} s")
    print("| pool N | mean over layers | best layer | all layers |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['pool_tokens']} | {r['mean_layer_acc']:.2f} | {r['best_layer_acc']:.2f} | {r['all_layers_acc']:.2f} |")
    Path(args.out).write_text(json.dumps({"length": args.length, "per_task": args.per_task, "tasks": tasks,
                                          "rows": rows, "date": time.strftime("%Y-%m-%d")}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
