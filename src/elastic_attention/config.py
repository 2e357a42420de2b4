"""ElasticConfig: every knob of the method in one dataclass, saved next to a trained router as JSON."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

RETRIEVAL_MODES = ("fa", "xa")
SPARSE_MODES = ("ssa", "xa")
TAU_SCHEDULES = ("exp", "cosine", "constant")
ROUTER_NORMS = ("none", "standardize")


@dataclass
class ElasticConfig:
    """Configuration of Elastic Attention (defaults from the paper, see docs/concepts.md).

    Decision convention: r = 1 (True) sends a KV head to `sparse_mode`, r = 0 (False) to
    `retrieval_mode`. This is the paper's convention; the public reference code stores the
    complement.
    """

    retrieval_mode: str = "fa"  # mode of heads the router keeps: "fa" (full) or "xa"
    sparse_mode: str = "ssa"  # mode of heads the router sparsifies: "ssa" or "xa"
    sink: int = 128  # SSA: first tokens every query sees
    local: int = 2048  # SSA: most recent tokens every query sees (itself included)
    xa_block: int = 64  # XA: block size of the block-sparse pattern
    xa_stride: int = 16  # XA: antidiagonal sampling stride
    xa_threshold: float = 0.9  # XA: probability mass the kept key blocks must reach
    pool_tokens: int = 100  # router pools the first and the last N prompt tokens
    router_hidden_mult: int = 4  # router MLP width = mult * head_dim
    # "standardize": pooled keys standardised per (KV head, channel) with statistics of training prompts,
    # plus a learned per-head logit bias; "none": the paper's router (docs/training.md has the measurements)
    router_norm: str = "standardize"
    tau_schedule: str = "exp"  # Gumbel-sigmoid temperature schedule during training
    tau_init: float = 1.5
    tau_min: float = 1.0
    tau_rate: float = 0.6  # decay rate r of the "exp" schedule

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(msg)

        need(self.retrieval_mode in RETRIEVAL_MODES,
             f"retrieval_mode={self.retrieval_mode!r} is not a known mode; use one of {RETRIEVAL_MODES}")
        need(self.sparse_mode in SPARSE_MODES,
             f"sparse_mode={self.sparse_mode!r} is not a known mode; use one of {SPARSE_MODES}")
        for name in ("sink", "local", "xa_block", "xa_stride", "pool_tokens", "router_hidden_mult"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                 f"{name}={value!r} must be a positive integer (for example the default "
                 f"{_default(name)})")
        need(self.xa_block % self.xa_stride == 0,
             f"xa_block={self.xa_block} must be a multiple of xa_stride={self.xa_stride}")
        need(isinstance(self.xa_threshold, (int, float)) and 0.0 < self.xa_threshold <= 1.0,
             f"xa_threshold={self.xa_threshold!r} must lie in (0, 1]; the paper uses 0.9")
        need(self.router_norm in ROUTER_NORMS,
             f"router_norm={self.router_norm!r} is not known; use one of {ROUTER_NORMS}")
        need(self.tau_schedule in TAU_SCHEDULES,
             f"tau_schedule={self.tau_schedule!r} is not known; use one of {TAU_SCHEDULES}")
        need(self.tau_init > 0 and self.tau_min > 0,
             f"temperatures must be positive (tau_init={self.tau_init}, tau_min={self.tau_min})")
        need(self.tau_rate >= 0, f"tau_rate={self.tau_rate} must be >= 0")

    @property
    def name(self) -> str:
        """The paper's name of the configuration, for example 'FA-SSA'."""
        return f"{self.retrieval_mode.upper()}-{self.sparse_mode.upper()}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ElasticConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ElasticConfig fields {unknown}; known fields are {sorted(known)}")
        return cls(**data)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> "ElasticConfig":
        """Accepts a JSON string or the path of a JSON file."""
        source = str(text_or_path)
        if not source.lstrip().startswith("{"):
            path = Path(source)
            if not path.is_file():
                raise ValueError(f"{source!r} is neither JSON text nor an existing JSON file")
            source = path.read_text()
        return cls.from_dict(json.loads(source))


def _default(name: str):
    return next(f.default for f in dataclasses.fields(ElasticConfig) if f.name == name)
