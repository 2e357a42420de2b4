"""Which heads the router keeps full, against the retrieval-head ranking, and what the misses have in common.

Reads an eval run's results.json that holds the `elastic` method and the retrieval scores (the static
baselines' ranking; `elastic-attn eval ... --methods elastic,static:...` stores them). Per task, over the
router's prompts:
- overlap: of the heads the router kept full, the share that are among the same number of top-ranked
  retrieval heads (1.0 = it keeps exactly the best retrieval heads; MSR-matched, so chance is 1 - MSR);
- top-10 kept: the share of the 10 best retrieval heads the router kept full;
- the same split by outcome: prompts answered right (score >= 0.5) against wrong, with their MSR.

    python benchmarks/router_head_choice.py [benchmarks/results/default_router/eval/results.json]
        [--out benchmarks/results/default_router/head_choice.json] [--haystack]

Reads JSON only (no model); prints a markdown table and writes JSON. --haystack also rebuilds the run's
make-data needle prompts (the default model's tokenizer, the run's seed) and splits them by haystack:
the repeated filler sentences against any other text, with the router's MSR and both methods' scores.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

NEEDLE_TASKS = ("passkey", "multikey_needle")
FILLER = "The grass is green"  # the filler haystack's first sentence (make_data)
DEFAULT = Path(__file__).resolve().parent / "results" / "default_router" / "eval" / "results.json"
TOP = 10


def head_choice(results: dict) -> list[dict]:
    scores = [s for row in results["retrieval_scores"] for s in row]
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    per_task: dict[str, list[dict]] = {}
    for r in results["records"]:
        if r["method"] != "elastic":
            continue
        full = [bool(x) for row in r["full_heads"] for x in row]
        n_full = sum(full)
        top = set(order[:n_full])
        per_task.setdefault(r["task"], []).append({
            "overlap": sum(full[i] for i in top) / n_full if n_full else 1.0,
            "top_kept": sum(full[i] for i in order[:TOP]) / TOP,
            "right": r["score"] >= 0.5, "msr": r["msr"]})
    rows = []
    for task, items in per_task.items():
        def mean(key, subset):
            return statistics.mean(x[key] for x in subset) if subset else None
        right = [x for x in items if x["right"]]
        wrong = [x for x in items if not x["right"]]
        rows.append({"task": task, "category": results["config"]["categories"].get(task), "n": len(items),
                     "overlap": mean("overlap", items), "top_kept": mean("top_kept", items),
                     "right": len(right), "right_msr": mean("msr", right), "right_top_kept": mean("top_kept", right),
                     "wrong": len(wrong), "wrong_msr": mean("msr", wrong), "wrong_top_kept": mean("top_kept", wrong)})
    return rows


def haystack_split(results: dict) -> list[dict]:
    """Needle prompts by haystack kind: the router's MSR and right answers, and full attention's."""
    from elastic_attention.eval.runner import build_samples
    from elastic_attention.models import load_default_model

    _, tokenizer = load_default_model()
    seed = results["config"]["seed"]
    rows = []
    for task in [t for t in NEEDLE_TASKS if t in results["config"]["tasks"]]:
        for length in results["config"]["lengths"]:
            samples = build_samples(tokenizer, task, length, results["config"]["samples"], seed)
            kind = {s.info.get("index", i): tokenizer.decode(s.input_ids).count(FILLER) > 3
                    for i, s in enumerate(samples)}
            for filler in (True, False):
                def recs(method):
                    return [r for r in results["records"] if r["task"] == task and r["length"] == length
                            and r["method"] == method and kind[r["index"]] == filler]
                elastic, full = recs("elastic"), recs("full")
                if elastic:
                    rows.append({"task": task, "length": length, "haystack": "filler" if filler else "other text",
                                 "n": len(elastic), "msr": statistics.mean(r["msr"] for r in elastic),
                                 "elastic_right": sum(r["score"] >= 0.5 for r in elastic),
                                 "full_right": sum(r["score"] >= 0.5 for r in full) if full else None})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="?", default=str(DEFAULT))
    ap.add_argument("--out", default=str(DEFAULT.parent.parent / "head_choice.json"))
    ap.add_argument("--haystack", action="store_true", help="split the needle tasks by haystack (loads the tokenizer)")
    args = ap.parse_args()
    results = json.loads(Path(args.results).read_text())
    if "elastic" not in results["config"]["methods"]:
        raise SystemExit(f"{args.results}: needs the 'elastic' method")
    if not results.get("retrieval_scores") and not args.haystack:
        raise SystemExit(f"{args.results}: no retrieval scores (no static method in the run): only --haystack applies")
    rows = head_choice(results) if results.get("retrieval_scores") else []

    def f(v):
        return "-" if v is None else f"{v:.2f}"
    if rows:
        print(f"| task | category | prompts | overlap with top retrieval heads | top-{TOP} kept full | right: n, MSR, "
              f"top-{TOP} kept | wrong: n, MSR, top-{TOP} kept |")
        print("|---|---|---:|---:|---:|---|---|")
    for r in rows:
        print(f"| {r['task']} | {r['category']} | {r['n']} | {f(r['overlap'])} | {f(r['top_kept'])} | "
              f"{r['right']}, {f(r['right_msr'])}, {f(r['right_top_kept'])} | "
              f"{r['wrong']}, {f(r['wrong_msr'])}, {f(r['wrong_top_kept'])} |")
    out = {"source": args.results, "top": TOP, "rows": rows}
    if args.haystack:
        out["haystack"] = haystack_split(results)
        print("\n| task | haystack | prompts | router MSR | router right | full attention right |")
        print("|---|---|---:|---:|---:|---:|")
        for r in out["haystack"]:
            print(f"| {r['task']} | {r['haystack']} | {r['n']} | {r['msr']:.2f} | {r['elastic_right']} | "
                  f"{'-' if r['full_right'] is None else r['full_right']} |")
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
