"""`elastic-attn demo`: test-time adaptive sparsity on the default model, offline, in minutes.

It loads the default model and its shipped router and runs a held-out mixed suite (prompts drawn apart
from every training seed) with three methods on identical prompts: full attention, the router
("elastic"), and the retrieval-ranked static hybrid at the router's mean MSR ("static:elastic"). It
prints per task and method the score, MSR, ESR and prefill time, then a verdict, and writes the tables
(markdown, JSON, CSV) and plots to --out. Everything is `elastic-attn eval` underneath (eval/): the
demo picks the suite, the methods and the sizes, and adds the verdict and two plots.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

SENSITIVE_TASKS = ("passkey", "niah_single_1", "multikey_needle")
ROBUST_TASKS = ("code_continuation", "fewshot_pattern", "topic_ending")
DEFAULT_TASKS = ",".join(SENSITIVE_TASKS + ROBUST_TASKS)
# 2K tokens lies well past the shipped router's sink + local (576), so sparse heads really prune; 4 prompts
# a task keep the CPU run of the six tasks x three methods inside ten minutes on two cores.
DEFAULT_LENGTHS = "2048"
DEFAULT_SAMPLES = 4
METHODS = "full,elastic,static:elastic"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "demo", help="the router on unseen prompts, side by side with full attention and a static hybrid",
        description="Load the default model and its shipped router, run a held-out mix of sensitive and robust "
                    "tasks with full attention, the router (elastic) and the retrieval-ranked static hybrid at "
                    "the router's mean MSR on identical prompts; print score, MSR, ESR and prefill time per task "
                    "and method and a verdict; write tables and plots to --out. Ctrl-C keeps finished tasks.")
    p.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS,
                   help="eval tasks, comma or space separated (default %(default)s; see `elastic-attn eval -h`)")
    p.add_argument("--lengths", nargs="+", default=DEFAULT_LENGTHS, help="prompt lengths in tokens "
                                                                         "(default %(default)s)")
    p.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help="prompts per task and length "
                                                                         "(default %(default)s)")
    p.add_argument("--out", default="elastic-demo", help="output folder (default ./%(default)s)")
    p.add_argument("--router", default="default", help="router directory, or 'default' for the shipped one")
    p.add_argument("--sparsity-bias", type=float, default=0.0,
                   help="added to every router logit before its decision: > 0 sparser, < 0 denser (default 0)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--max-new-tokens", type=int, default=None, help="cap every task's generation length")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(func=run_command)
    return p


def run_command(args) -> int:
    from .checks import resolve_device
    from .eval.command import evaluate

    device = resolve_device(args.device)
    # bf16 on a GPU is what the fused prefill kernels run; the CPU computes in fp32.
    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    out = Path(args.out)
    command = "elastic-attn " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    start = time.time()
    try:
        results, paths = evaluate(
            model="default", router=args.router, methods=METHODS, tasks=args.tasks, lengths=args.lengths,
            samples=args.samples, out=out, sparsity_bias=args.sparsity_bias, device=device, dtype=dtype,
            max_new_tokens=args.max_new_tokens, threads=args.threads, command=command)
    except KeyboardInterrupt:
        done = out / "results.json"
        print(f"\ninterrupted: the finished tasks are in {done}" if done.exists()
              else "\ninterrupted before the first task finished: nothing written", file=sys.stderr)
        return 130
    paths.update(write_demo_plots(results, out))
    print(demo_table(results))
    print()
    print(verdict(results))
    print(f"\n{time.time() - start:.0f} s in all on {device}; wrote {len(paths)} files to {out.resolve()}")
    for kind, path in paths.items():
        print(f"  {kind}: {path}")
    return 0


def _category(results, task) -> str:
    return (results.config.get("categories") or {}).get(task) or "-"


def demo_table(results) -> str:
    """One row per task, length and method: category, score, MSR, ESR (all layers), prefill time and the KV
    cache held after the prompt as a share of a plain cache's."""
    from .eval.report import find_cell

    lines = ["| task | category | length | method | n | score | MSR | ESR | prefill s | KV cache |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for task in results.tasks:
        for length in results.lengths:
            for m in results.methods:
                c = find_cell(results, task, length, m)
                if c is None:
                    continue
                lines.append(f"| {task} | {_category(results, task)} | {length} | {m} | {c['n']} | {c['score']:.1f} "
                             f"| {c['msr']:.2f} | {c['esr_all_layers']:.2f} | {c['prefill_s']:.2f} "
                             f"| {100 * c['kv_ratio']:.0f} % |")
    return "\n".join(lines)


def _prefill(results, method, tasks) -> float:
    rows = [r["prefill_s"] for r in results.records if r["method"] == method and r["task"] in tasks]
    return sum(rows) / len(rows) if rows else float("nan")


def verdict(results) -> str:
    """A few lines: the router's MSR per category, its scores against full attention and against the static
    hybrid at the same mean MSR, and its prefill time against full attention's."""
    from .eval.report import category_summary

    summary = category_summary(results)
    msr = results.config.get("static_elastic_msr")
    lines = []
    if msr is not None:
        lines.append(f"elastic: mean MSR {msr:.2f} over the suite, chosen prompt by prompt.")
    for cat in ("sensitive", "robust"):
        per = summary.get(cat, {})
        e, f, s = per.get("elastic"), per.get("full"), per.get("static:elastic")
        if not (e and f):
            continue
        part = (f"{cat} tasks: elastic MSR {e['msr']:.2f}, score {e['score']:.1f} against full attention's "
                f"{f['score']:.1f}")
        if e["score_vs_full"] is not None:
            part += f" ({e['score_vs_full']:.0f} % of full)"
        if s:
            pct = f" ({s['score_vs_full']:.0f} % of full)" if s["score_vs_full"] is not None else ""
            part += f"; static hybrid at the same mean MSR: {s['score']:.1f}{pct}"
        lines.append(part + ".")
    tasks = set(results.tasks)
    full_t, elastic_t = _prefill(results, "full", tasks), _prefill(results, "elastic", tasks)
    if full_t == full_t and elastic_t == elastic_t and full_t > 0:
        lines.append(f"prefill: elastic {elastic_t:.2f} s a prompt against full attention's {full_t:.2f} s "
                     f"({elastic_t / full_t:.2f}x).")
    kv = [r["kv_ratio"] for r in results.records if r["method"] == "elastic" and "kv_ratio" in r]
    if kv:
        lines.append(f"KV cache after the prompt: elastic holds {100 * sum(kv) / len(kv):.0f} % of a full cache.")
    return "\n".join(lines) if lines else "no finished cell to judge"


def write_demo_plots(results, out) -> dict[str, Path]:
    """Score against MSR (one point per task and method) and the layer x KV-head routing of one robust and
    one sensitive prompt under the router."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    paths = {}
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    markers = {"full": "o", "elastic": "*", "static:elastic": "s"}
    colors = {"sensitive": "tab:red", "robust": "tab:blue"}
    for c in results.cells:
        cat = _category(results, c["task"])
        ax.scatter(c["msr"], c["score"], marker=markers.get(c["method"], "x"), s=90 if c["method"] == "elastic" else 45,
                   color=colors.get(cat, "gray"), alpha=0.8, edgecolor="black", linewidth=0.4)
        if c["method"] == "elastic":
            ax.annotate(c["task"], (c["msr"], c["score"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    for m, mk in markers.items():
        ax.scatter([], [], marker=mk, color="gray", label=m)
    for cat, col in colors.items():
        ax.scatter([], [], marker="o", color=col, label=cat)
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-3, 103)
    ax.set_xlabel("MSR (fraction of KV heads sparse)")
    ax.set_ylabel("score (0-100)")
    ax.set_title("Score against sparsity, per task and method")
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths["score_vs_msr"] = out / "score_vs_msr.png"
    fig.savefig(paths["score_vs_msr"], dpi=120)
    plt.close(fig)

    picks = []
    for cat in ("robust", "sensitive"):
        rows = [r for r in results.records if r["method"] == "elastic" and _category(results, r["task"]) == cat]
        if rows:
            picks.append((cat, rows[0]))
    if picks:
        fig, axes = plt.subplots(1, len(picks), figsize=(2.6 * len(picks) + 1.2, 5.5), squeeze=False,
                                 layout="constrained")
        image = None
        for ax, (cat, r) in zip(axes[0], picks):
            image = ax.imshow(r["full_heads"], aspect="auto", vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
            ax.set_title(f"{cat}: {r['task']}\nMSR {r['msr']:.2f}", fontsize=9)
            ax.set_xlabel("KV head")
            ax.set_ylabel("layer")
            ax.set_xticks(range(len(r["full_heads"][0])))
        fig.colorbar(image, ax=axes.ravel().tolist(), ticks=[0, 1], label="0 = sparse (SSA), 1 = full")
        fig.suptitle("The router's decisions for one prompt of each kind", fontsize=10)
        paths["routing_examples"] = out / "routing_examples.png"
        fig.savefig(paths["routing_examples"], dpi=120)
        plt.close(fig)
    return paths
