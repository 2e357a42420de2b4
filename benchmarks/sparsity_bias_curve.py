"""The test-time sparsity knob: MSR and task scores of a router against `sparsity_bias` (docs/training.md).

The bias is added to every router logit before the decision (> 0: sparser). The values tried are the
negated quantiles of the router's logits on a few held-out prompts, so the curve spans the whole range of
the router (plus 0, the trained router). For each value, `evaluate` runs the elastic method on the given
sensitive and robust tasks (identical prompts for every value). Prints a table, writes a JSON and a PNG.

python benchmarks/sparsity_bias_curve.py --router default --lengths 4096 --samples 8 --out results/sparsity_bias
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import elastic_attention as ea
from elastic_attention.eval.command import evaluate
from elastic_attention.eval.mix import mix_samples
from elastic_attention.eval.report import category_summary
from elastic_attention.models import load_model

SENSITIVE = "passkey,kv_retrieval,multidoc_qa,niah_single_2,vt"
ROBUST = "code_continuation,fewshot_pattern,prose_continuation,topic_ending"
QUANTILES = (0.1, 0.3, 0.5, 0.7, 0.9)


def logit_quantiles(model, tok, length: int, device, quantiles=QUANTILES) -> list[float]:
    """Quantiles of every router logit over one held-out prompt of each make-data task."""
    logits = []
    with torch.no_grad():
        for task in ("passkey", "kv_retrieval", "multidoc_qa", "code_continuation", "prose_continuation",
                     "fewshot_pattern"):
            ids = mix_samples(tok, task, length, 1, seed=7)[0].input_ids
            model(input_ids=torch.tensor([ids], device=device), use_cache=False, logits_to_keep=1)
            logits.append(ea.routing_stats(model).logits.flatten())
    values = torch.cat(logits).float()
    return torch.quantile(values, torch.tensor(quantiles)).tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--router", default="default")
    ap.add_argument("--lengths", default="4096")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--tasks", default=f"{SENSITIVE},{ROBUST}")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--quantiles", default=",".join(map(str, QUANTILES)),
                    help="logit quantiles whose negatives are the biases tried (besides 0)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "sparsity_bias"))
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    model, tok = load_model("default", device=device, dtype=torch.bfloat16 if cuda else torch.float32)
    ea.load_router(model, args.router)
    model.eval()
    length = int(args.lengths.split(",")[0])
    quantiles = [float(q) for q in args.quantiles.split(",")]
    biases = sorted({0.0, *(round(-q, 3) for q in logit_quantiles(model, tok, length, device, quantiles))})
    out = Path(args.out)
    rows = []
    for bias in biases:
        start = time.time()
        results, _ = evaluate(model, tok, methods="full,elastic" if bias == 0.0 else "elastic", tasks=args.tasks,
                              lengths=args.lengths, samples=args.samples, max_new_tokens=args.max_new_tokens,
                              sparsity_bias=bias, batch_size=args.samples, device=device,
                              dtype="bfloat16" if cuda else "float32", progress=False, plots=False)
        summary = category_summary(results)
        row = {"bias": bias, "seconds": time.time() - start}
        for cat, per in summary.items():
            row[cat] = per["elastic"]
            if "full" in per:
                row[f"{cat}_full"] = per["full"]
        rows.append(row)
        print(f"bias {bias:+.3f}: " + ", ".join(f"{c} score {row[c]['score']:.1f} MSR {row[c]['msr']:.2f}"
                                                  for c in summary), flush=True)
    full = {c: next(r[f"{c}_full"]["score"] for r in rows if f"{c}_full" in r) for c in ("sensitive", "robust")}
    print("\n| bias | sensitive MSR | sensitive score (% of full) | robust MSR | robust score (% of full) |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        s, b = r["sensitive"], r["robust"]
        share = {c: 100 * r[c]["score"] / max(full[c], 1e-9) for c in full}
        print(f"| {r['bias']:+.2f} | {s['msr']:.2f} | {s['score']:.1f} ({share['sensitive']:.0f} %) | "
              f"{b['msr']:.2f} | {b['score']:.1f} ({share['robust']:.0f} %) |")
    out.mkdir(parents=True, exist_ok=True)
    meta = {"router": args.router, "lengths": args.lengths, "samples": args.samples, "tasks": args.tasks,
            "device": torch.cuda.get_device_name() if cuda else "cpu", "date": time.strftime("%Y-%m-%d"),
            "full": full, "rows": rows}
    (out / "sparsity_bias.json").write_text(json.dumps(meta, indent=1) + "\n")
    plot(rows, full, out / "sparsity_bias.png")
    print(f"wrote {out / 'sparsity_bias.json'} and {out / 'sparsity_bias.png'}")


def plot(rows, full, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    x = [r["bias"] for r in rows]
    for cat, color in (("sensitive", "C3"), ("robust", "C0")):
        a.plot(x, [r[cat]["msr"] for r in rows], marker="o", color=color, label=cat)
        b.plot([r[cat]["msr"] for r in rows], [r[cat]["score"] for r in rows], marker="o", color=color,
               label=f"{cat} (elastic)")
        b.axhline(full[cat], color=color, linestyle="--", linewidth=0.8, label=f"{cat}, full attention")
    a.set_xlabel("sparsity bias (added to every router logit)")
    a.set_ylabel("MSR")
    a.set_ylim(-0.02, 1.02)
    a.set_title("MSR against the bias")
    b.set_xlabel("MSR")
    b.set_ylabel("score (0-100)")
    b.set_title("score against MSR as the bias moves")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
