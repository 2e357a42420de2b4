"""Tables (markdown, CSV), JSON and plots (PNG, matplotlib Agg) of an evaluation run."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from .runner import EvalResults

CSV_FIELDS = ["task", "length", "method", "n", "score", "msr", "esr", "esr_all_layers", "prefill_s", "decode_s",
              "kv_ratio", "prompt_tokens"]


def _fmt(value, digits=2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def find_cell(results: EvalResults, task, length, method):
    """The summary cell of one task, length and method, or None."""
    return next((c for c in results.cells if (c["task"], c["length"], c["method"]) == (task, length, method)), None)


def markdown_table(results: EvalResults) -> str:
    """Two tables: scores (0-100) per task and length with one column per method, then the details."""
    methods = results.methods
    lines = ["Score (0-100), mean over samples; MSR = share of KV heads sparse.", "",
             "| task | length (tokens) | " + " | ".join(f"{m} score (MSR)" for m in methods) + " |",
             "|---|---:|" + "---:|" * len(methods)]
    for task in results.tasks:
        for length in results.lengths:
            row = []
            for m in methods:
                c = find_cell(results, task, length, m)
                row.append("-" if c is None else f"{_fmt(c['score'], 1)} ({_fmt(c['msr'])})")
            lines.append(f"| {task} | {length} | " + " | ".join(row) + " |")
    avg = []
    for m in methods:
        scores = [c["score"] for c in results.cells if c["method"] == m]
        avg.append(_fmt(sum(scores) / len(scores), 1) if scores else "-")
    lines.append("| **average** | | " + " | ".join(avg) + " |")
    lines += category_table(results)
    lines += ["", "| task | length | method | n | score | MSR | ESR last layer | ESR all layers | prefill s/sample "
                  "| decode s/sample |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for task in results.tasks:
        for length in results.lengths:
            for m in methods:
                c = find_cell(results, task, length, m)
                if c is None:
                    continue
                lines.append(f"| {task} | {length} | {m} | {c['n']} | {_fmt(c['score'], 1)} | {_fmt(c['msr'])} | "
                             f"{_fmt(c['esr'])} | {_fmt(c['esr_all_layers'])} | {_fmt(c['prefill_s'], 3)} | "
                             f"{_fmt(c['decode_s'], 3)} |")
    return "\n".join(lines) + "\n"


def category_summary(results: EvalResults) -> dict[str, dict[str, dict]]:
    """{category: {method: {"score", "msr", "score_vs_full"}}}: means over the category's cells (tasks with
    a category only); score_vs_full = the method's score as a percentage of full attention's (None without
    a 'full' method or when full scores 0)."""
    categories = results.config.get("categories") or {}
    out: dict[str, dict[str, dict]] = {}
    for cat in sorted({c for c in categories.values() if c}):
        tasks = {t for t, c in categories.items() if c == cat}
        per = {}
        for m in results.methods:
            cells = [c for c in results.cells if c["task"] in tasks and c["method"] == m]
            if cells:
                per[m] = {"score": sum(c["score"] for c in cells) / len(cells),
                          "msr": sum(c["msr"] for c in cells) / len(cells)}
        full = per.get("full", {}).get("score")
        for v in per.values():
            v["score_vs_full"] = 100 * v["score"] / full if full else None
        out[cat] = per
    return out


def category_table(results: EvalResults) -> list[str]:
    summary = category_summary(results)
    if not summary:
        return []
    lines = ["", "By category (mean over its tasks): score (MSR) [% of full]", "",
             "| category | " + " | ".join(results.methods) + " |", "|---|" + "---:|" * len(results.methods)]
    for cat, per in summary.items():
        row = []
        for m in results.methods:
            v = per.get(m)
            row.append("-" if v is None
                       else f"{_fmt(v['score'], 1)} ({_fmt(v['msr'])}) [{_fmt(v['score_vs_full'], 0)}]")
        lines.append(f"| {cat} | " + " | ".join(row) + " |")
    matched = results.config.get("static_elastic_msr")
    if matched is not None:
        lines.append(f"static:elastic ran at MSR {matched:.3f}, the elastic router's mean over the run.")
    return lines


def write_report(results: EvalResults, out_dir, plots: bool = True) -> dict[str, Path]:
    """results.json, results.csv, table.md and (plots=True) three PNG plots in out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "csv": out / "results.csv", "table": out / "table.md"}
    paths["json"].write_text(json.dumps(results.to_dict(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    with open(paths["csv"], "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for c in results.cells:
            writer.writerow({k: c.get(k) for k in CSV_FIELDS})
    paths["table"].write_text(markdown_table(results), encoding="utf-8")
    if plots:
        paths.update(write_plots(results, out))
    return paths


def write_plots(results: EvalResults, out: Path) -> dict[str, Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    methods, tasks, lengths = results.methods, results.tasks, results.lengths

    # 1. MSR per task per method (grouped bars, mean over lengths and samples).
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(tasks) * max(1, len(methods)) ** 0.5 + 2), 4.5))
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        ys = []
        for t in tasks:
            vals = [c["msr"] for c in results.cells if c["task"] == t and c["method"] == m and c["msr"] is not None]
            ys.append(sum(vals) / len(vals) if vals else 0.0)
        xs = [k + (i - (len(methods) - 1) / 2) * width for k in range(len(tasks))]
        ax.bar(xs, ys, width, label=m)
        for x, y in zip(xs, ys):  # the value on every bar (a zero bar is otherwise invisible)
            ax.text(x, y + 0.01, f"{y:.2f}", ha="center", va="bottom", fontsize=6)
    ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("MSR (fraction of KV heads sparse)")
    ax.set_xlabel("task")
    ax.set_title("Model sparsity ratio per task (mean over lengths and samples)")
    ax.legend(title="method", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    paths["msr_plot"] = out / "msr_by_task.png"
    fig.savefig(paths["msr_plot"], dpi=120)
    plt.close(fig)

    # 2. Routing frequency heatmaps: fraction of samples whose head ran full attention.
    n = len(methods)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    layers, heads = results.head_shape
    fig, axes = plt.subplots(rows, cols, figsize=(2.0 + (1.2 + 0.35 * heads) * cols,
                                                  1.4 + max(2.0, 0.16 * layers) * rows),
                             squeeze=False, layout="constrained")
    image = None
    for k, m in enumerate(methods):
        ax = axes[k // cols][k % cols]
        image = ax.imshow(results.full_fraction(m).numpy(), aspect="auto", vmin=0, vmax=1, cmap="viridis",
                          interpolation="nearest")
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("KV head")
        if k % cols == 0:
            ax.set_ylabel("layer")
        ax.set_xticks(range(heads))
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.suptitle("Routing frequency: share of samples routed to full attention\n(all tasks and lengths)",
                 fontsize=10)
    fig.colorbar(image, ax=axes.ravel().tolist(), label="fraction of samples full")
    paths["heatmap"] = out / "routing_heatmap.png"
    fig.savefig(paths["heatmap"], dpi=120)
    plt.close(fig)

    # 3. Score against length, one panel per task plus the average.
    panels = tasks + (["average"] if len(tasks) > 1 else [])
    cols = min(len(panels), 4)
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows + 0.6), squeeze=False)
    for k, panel in enumerate(panels):
        ax = axes[k // cols][k % cols]
        for i, m in enumerate(methods):
            ys = []
            for length in lengths:
                vals = [c["score"] for c in results.cells if c["length"] == length and c["method"] == m
                        and (panel == "average" or c["task"] == panel)]
                ys.append(sum(vals) / len(vals) if vals else float("nan"))
            # Distinct markers, shrinking sizes: equal scores of several methods stay visible.
            ax.plot(lengths, ys, marker="osD^vx*"[i % 7], markersize=max(10 - 1.6 * i, 3), alpha=0.85,
                    linestyle=("-", "--", ":", "-.")[i % 4], label=m)
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("prompt length (tokens)")
        ax.set_ylabel("score (0-100)")
        ax.set_ylim(-3, 103)
        ax.set_xticks(lengths, [str(x) for x in lengths])
        ax.grid(alpha=0.3)
    for k in range(len(panels), rows * cols):
        axes[k // cols][k % cols].axis("off")
    axes[0][0].legend(title="method", fontsize=8)
    fig.suptitle("Score against prompt length")
    fig.tight_layout()
    paths["score_plot"] = out / "score_vs_length.png"
    fig.savefig(paths["score_plot"], dpi=120)
    plt.close(fig)
    return paths
