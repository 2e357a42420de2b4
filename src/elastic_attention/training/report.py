"""What a training run tells its user: a JSONL log line per step, a progress bar, and a PNG of the curves."""

from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm


class StepLog:
    """Appends one JSON object per step to `path`; a resumed run drops lines of steps it will redo."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        lines = []
        if resume_step > 0 and path.is_file():
            for line in path.read_text().splitlines():
                entry = json.loads(line)
                if entry.get("step", 0) <= resume_step:
                    lines.append(line)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(line + "\n" for line in lines))

    def write(self, entry: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(entry) + "\n")


def progress(total: int, initial: int, enabled: bool):
    return tqdm(total=total, initial=initial, desc="train", unit="step", disable=not enabled, dynamic_ncols=True)


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot(log_path: Path, out_path: Path) -> Path:
    """Three panels against the step: MSR (with dashed targets), multipliers, CE — per constraint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = [e for e in read_log(log_path) if "constraints" in e]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    names = sorted({n for e in entries for n in e["constraints"]})
    for i, name in enumerate(names):
        rows = [(e["step"], e["constraints"][name]) for e in entries if name in e["constraints"]]
        steps = [s for s, _ in rows]
        color = f"C{i}"
        axes[0].plot(steps, [c["msr"] for _, c in rows], color=color, label=name)
        axes[0].axhline(rows[-1][1]["target"], color=color, linestyle="--", linewidth=0.8)
        axes[1].plot(steps, [c["lambda1"] for _, c in rows], color=color, label=f"{name} λ1")
        axes[1].plot(steps, [c["lambda2"] for _, c in rows], color=color, linestyle=":", label=f"{name} λ2")
        axes[2].plot(steps, [c["ce"] for _, c in rows], color=color, label=name)
    for ax, title in zip(axes, ("MSR (dashed: target)", "Lagrange multipliers", "answer cross-entropy")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
