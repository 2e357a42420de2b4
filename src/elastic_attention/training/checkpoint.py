"""Training checkpoints: everything a resumed run needs to end where an uninterrupted one would.

One file per checkpoint, `checkpoints/step-NNNNNNN.pt`, written to a temporary file and renamed:
learner (router or gate) and multiplier weights, both optimizers, the step, every process's RNG
states, and the data fingerprint (the data order itself is a function of seed and step, see Batcher).
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import torch

from ..adapter import _atomic_write

PATTERN = re.compile(r"step-(\d+)\.pt$")


def rng_state(device: torch.device) -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def checkpoints(directory: Path) -> list[Path]:
    """Checkpoint files in `directory`, oldest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := PATTERN.search(p.name))]
    return [p for _, p in sorted(found)]


def save(directory: Path, step: int, state: dict, keep: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"step-{step:07d}.pt"
    _atomic_write(target, lambda f: torch.save(state, f))
    for old in checkpoints(directory)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return target


def load_latest(directory: Path) -> dict | None:
    found = checkpoints(directory)
    if not found:
        return None
    state = torch.load(found[-1], map_location="cpu", weights_only=False)
    state["path"] = str(found[-1])
    return state
