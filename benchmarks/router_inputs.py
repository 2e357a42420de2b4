"""What the routers see and what pushes them: the measurements behind docs/training.md, "Why routing did not adapt".

On the default model (CPU, fp32), for make-data prompts of two seeds (train = seed 0, held-out = seed 1)
and RULER prompts:
1. separability of the pooled router inputs (boundary-pooled pre-RoPE keys) by category and by task, per
   layer: nearest-centroid and logistic-regression classifiers fitted on seed 0, scored on seed 1; and
   which category RULER prompts fall in;
2. the anatomy of the pooled vectors per layer: the constant part (mean over prompts and heads), the
   per-head part and the per-prompt part, as RMS norms, and the per-prompt part that separates the two
   categories;
3. the logits of freshly initialised routers (3 seeds): spread across prompts against spread across
   heads, raw and on standardised inputs;
4. the price of each head: d CE / d r_h (r = 1 sparse) at r = 0 (every head full) for prompts of each
   category, against the constraint's price per unit multiplier, 1 / (layers x heads).

python benchmarks/router_inputs.py --length 1024 --per-task 8 --grad-samples 2 --out results/router_inputs.json
(about 10 minutes on 2 CPU cores). Prints a table per measurement and writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

import elastic_attention as ea
from elastic_attention.eval import ruler
from elastic_attention.integrations.hf import runtime_of
from elastic_attention.models import load_model
from elastic_attention.calibration import pooled_keys
from elastic_attention.router import AttentionRouter
from elastic_attention.training.make_data import TASKS, make_records

RESULTS = Path(__file__).resolve().parent / "results"
RULER_TASKS = ("niah_single_1", "niah_single_2", "niah_multikey_1", "vt", "cwe", "fwe")


# ------------------------------------------------------------------------------------ classifiers

def standardise(train: torch.Tensor, *others: torch.Tensor):
    mean, std = train.mean(0), train.std(0).clamp(min=1e-6)
    return [(x - mean) / std for x in (train, *others)]


def nearest_centroid(xtr, ytr, xte) -> torch.Tensor:
    classes = ytr.unique()
    centroids = torch.stack([xtr[ytr == c].mean(0) for c in classes])
    return classes[torch.cdist(xte, centroids).argmin(1)]


def logistic(xtr, ytr, xte, steps: int = 300, l2: float = 1e-2) -> torch.Tensor:
    """Multinomial logistic regression (L-BFGS, L2): the best a linear read-out of the inputs can do."""
    classes = ytr.unique()
    target = (ytr[:, None] == classes[None]).float().argmax(1)
    w = torch.zeros(xtr.shape[1], len(classes), requires_grad=True)
    b = torch.zeros(len(classes), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xtr @ w + b, target) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return classes[(xte @ w + b).argmax(1)]


def separability(train, test, ytr, yte, per_layer=True) -> list[dict]:
    """Held-out accuracy of both classifiers per layer (features: the layer's heads concatenated)."""
    rows = []
    layers = train.shape[1]
    for layer in range(layers):
        xtr, xte = train[:, layer].flatten(1), test[:, layer].flatten(1)
        raw = (nearest_centroid(xtr, ytr, xte) == yte).float().mean().item()
        s_tr, s_te = standardise(xtr, xte)
        nc = (nearest_centroid(s_tr, ytr, s_te) == yte).float().mean().item()
        lr = (logistic(s_tr, ytr, s_te) == yte).float().mean().item()
        rows.append({"layer": layer, "centroid_raw": raw, "centroid_std": nc, "logistic_std": lr})
    return rows


# ------------------------------------------------------------------------------------ anatomy

def anatomy(x: torch.Tensor, category: torch.Tensor) -> list[dict]:
    """x [n, L, H, d] -> per layer RMS of the constant, per-head and per-prompt parts, and the category
    difference's size against the per-prompt part."""
    rows = []
    for layer in range(x.shape[1]):
        v = x[:, layer].double()  # [n, H, d]
        const = v.mean((0, 1))  # [d]
        head = v.mean(0) - const  # [H, d]
        prompt = v - v.mean(0)  # [n, H, d]
        gap = v[category == 1].mean(0) - v[category == 0].mean(0)  # [H, d]

        def rms(t):
            return t.pow(2).sum(-1).mean().sqrt().item()

        total = rms(v.reshape(-1, v.shape[-1]))
        rows.append({"layer": layer, "total": total, "constant": const.norm().item(), "head": rms(head),
                     "prompt": rms(prompt), "prompt_share": rms(prompt) / total,
                     "category_gap": rms(gap), "gap_share": rms(gap) / total})
    return rows


def init_logit_spread(x: torch.Tensor, head_dim: int, seeds=(0, 1, 2)) -> dict:
    """Fresh routers on the captured inputs: std of the logit across prompts (per head, averaged) and
    across heads (of the per-head mean over prompts), raw and standardised per (layer, head, channel)."""
    out = {}
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    for name, inputs in (("raw", x), ("standardised", (x - mean) / std)):
        across_prompts, across_heads = [], []
        for seed in seeds:
            torch.manual_seed(seed)
            for layer in range(x.shape[1]):
                router = AttentionRouter(head_dim)
                with torch.no_grad():
                    z = router.mlp(inputs[:, layer].float())  # [n, H]
                across_prompts.append(z.std(0).mean().item())
                across_heads.append(z.mean(0).std().item())
        out[name] = {"std_across_prompts": sum(across_prompts) / len(across_prompts),
                     "std_across_heads": sum(across_heads) / len(across_heads)}
    return out


# ------------------------------------------------------------------------------------ gradients

def head_prices(model, samples: list[tuple[list[int], list[int]]], desc: str) -> torch.Tensor:
    """[n, L, H] d CE / d r_h at r = 0 (every head full; r = 1 is sparse): the CE cost of sparsifying a
    head, to first order, through the straight-through mix the trainer uses."""
    from elastic_attention.training.objective import answer_ce

    rt = runtime_of(model)
    leaves = {}

    def decide(layer):
        def fn(logits, generator=None):
            r = torch.zeros_like(logits, requires_grad=True)
            leaves[layer] = r
            return r
        return fn

    originals = [s.router.decide for s in rt.layers]
    for i, s in enumerate(rt.layers):
        s.router.decide = decide(i)
        s.router.train()
    out = []
    try:
        for prompt, answer in tqdm(samples, desc=desc):
            ids = torch.tensor([prompt + answer])
            mask = torch.zeros_like(ids, dtype=torch.bool)
            mask[0, len(prompt):] = True
            rt.route_mask = torch.zeros_like(mask)
            rt.route_mask[0, :len(prompt)] = True
            logits = model(input_ids=ids, use_cache=False, logits_to_keep=len(answer) + 1).logits
            ce = answer_ce(logits, ids, mask).sum()
            grads = torch.autograd.grad(ce, [leaves[i] for i in range(len(rt.layers))])
            out.append(torch.stack([g[0] for g in grads]))
    finally:
        rt.route_mask = None
        for s, fn in zip(rt.layers, originals):
            s.router.decide = fn
            s.router.eval()
    return torch.stack(out)


# ------------------------------------------------------------------------------------ main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--per-task", type=int, default=8)
    ap.add_argument("--ruler-samples", type=int, default=4)
    ap.add_argument("--grad-samples", type=int, default=2, help="prompts per task for the head prices")
    ap.add_argument("--sink", type=int, default=64)
    ap.add_argument("--local", type=int, default=512)
    ap.add_argument("--out", default=str(RESULTS / "router_inputs.json"))
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    start = time.time()
    model, tok = load_model("default")
    ea.attach(model, ea.ElasticConfig(sink=args.sink, local=args.local))
    model.eval()
    rt = runtime_of(model)
    head_dim = model.config.head_dim

    def encode(records):
        return [tok(r["prompt"], add_special_tokens=False)["input_ids"] for r in records]

    train_rec = make_records(tok, [args.length], args.per_task, seed=0)
    test_rec = make_records(tok, [args.length], args.per_task, seed=1)
    tasks = list(TASKS)
    x_tr = pooled_keys(model, encode(train_rec), progress=True, desc="pool seed 0")
    x_te = pooled_keys(model, encode(test_rec), progress=True, desc="pool seed 1")
    cat = {"robust": 0, "sensitive": 1}
    c_tr = torch.tensor([cat[r["category"]] for r in train_rec])
    c_te = torch.tensor([cat[r["category"]] for r in test_rec])
    t_tr = torch.tensor([tasks.index(r["task"]) for r in train_rec])
    t_te = torch.tensor([tasks.index(r["task"]) for r in test_rec])
    ruler_prompts = {t: [s.input_ids for s in ruler.ruler_samples(tok, t, args.length, args.ruler_samples)]
                     for t in RULER_TASKS}
    x_ru = {t: pooled_keys(model, p, progress=True, desc=f"pool {t}") for t, p in ruler_prompts.items()}

    result = {"length": args.length, "per_task": args.per_task, "sink": args.sink, "local": args.local,
              "layers": rt.num_layers, "kv_heads": rt.kv_heads, "head_dim": head_dim}
    result["category"] = separability(x_tr, x_te, c_tr, c_te)
    result["task"] = separability(x_tr, x_te, t_tr, t_te)
    # All layers together, and where RULER prompts fall (a category classifier fitted on make-data seed 0).
    s_tr, s_te = standardise(x_tr.flatten(1), x_te.flatten(1))
    result["category_all_layers"] = (logistic(s_tr, c_tr, s_te) == c_te).float().mean().item()
    result["task_all_layers"] = (logistic(s_tr, t_tr, s_te) == t_te).float().mean().item()
    mean, std = x_tr.flatten(1).mean(0), x_tr.flatten(1).std(0).clamp(min=1e-6)
    result["ruler_predicted_sensitive"] = {
        t: logistic(s_tr, c_tr, (x.flatten(1) - mean) / std).float().mean().item() for t, x in x_ru.items()}
    result["anatomy"] = anatomy(torch.cat([x_tr, x_te]), torch.cat([c_tr, c_te]))
    result["init_logits"] = init_logit_spread(torch.cat([x_tr, x_te]), head_dim)

    if args.grad_samples > 0:
        chosen = {}
        for r in train_rec:
            chosen.setdefault(r["task"], [])
            if len(chosen[r["task"]]) < args.grad_samples:
                chosen[r["task"]].append(r)
        prices = {}
        for task, recs in chosen.items():
            samples = [(tok(r["prompt"], add_special_tokens=False)["input_ids"],
                        tok(r["answer"], add_special_tokens=False)["input_ids"]) for r in recs]
            prices[task] = head_prices(model, samples, f"prices {task}")
        per_head = rt.num_layers * rt.kv_heads
        result["prices"] = {
            "constraint_price_per_unit_lambda": 1.0 / per_head,
            "per_task": {t: {"category": TASKS[t][0], "mean": p.mean().item(), "abs_mean": p.abs().mean().item(),
                             "max": p.max().item(), "sum_over_heads": p.sum((1, 2)).mean().item(),
                             "top5_heads": [[int(i) // rt.kv_heads, int(i) % rt.kv_heads]
                                            for i in p.mean(0).flatten().argsort(descending=True)[:5]]}
                         for t, p in prices.items()}}
    result["wall_s"] = time.time() - start
    report(result)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


def report(r: dict) -> None:
    print(f"\nheld-out accuracy per layer (train seed 0, test seed 1, {r['per_task']} prompts per task, "
          f"{r['length']} tokens)")
    print("| layer | category: centroid raw / std / logistic | task (9): centroid raw / std / logistic |")
    print("|---|---|---|")
    for c, t in zip(r["category"], r["task"]):
        print(f"| {c['layer']} | {c['centroid_raw']:.2f} / {c['centroid_std']:.2f} / {c['logistic_std']:.2f} | "
              f"{t['centroid_raw']:.2f} / {t['centroid_std']:.2f} / {t['logistic_std']:.2f} |")
    print(f"all layers, logistic: category {r['category_all_layers']:.2f}, task {r['task_all_layers']:.2f}")
    print("RULER prompts classified sensitive: " + ", ".join(f"{t} {v:.2f}"
                                                             for t, v in r["ruler_predicted_sensitive"].items()))
    print("\nanatomy of the pooled vectors (RMS norms)")
    print("| layer | total | constant | per head | per prompt | prompt share | category gap share |")
    print("|---|---|---|---|---|---|---|")
    for a in r["anatomy"]:
        print(f"| {a['layer']} | {a['total']:.2f} | {a['constant']:.2f} | {a['head']:.2f} | {a['prompt']:.2f} | "
              f"{a['prompt_share']:.3f} | {a['gap_share']:.3f} |")
    for name, v in r["init_logits"].items():
        print(f"fresh routers, {name} inputs: logit std across prompts {v['std_across_prompts']:.4f}, "
              f"across heads {v['std_across_heads']:.4f}")
    if "prices" in r:
        p = r["prices"]
        print(f"\nhead prices dCE/dr at r = 0; constraint price per unit lambda = "
              f"{p['constraint_price_per_unit_lambda']:.4f}")
        print("| task | category | mean | mean abs | max | sum over heads |")
        print("|---|---|---|---|---|---|")
        for t, v in p["per_task"].items():
            print(f"| {t} | {v['category']} | {v['mean']:.4f} | {v['abs_mean']:.4f} | {v['max']:.3f} | "
                  f"{v['sum_over_heads']:.3f} |")


if __name__ == "__main__":
    main()
