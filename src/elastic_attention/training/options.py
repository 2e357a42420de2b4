"""TrainConfig and the objective's choices, apart from torch: `elastic-attn --help` builds the train
command's options from them without importing torch."""

from __future__ import annotations

from dataclasses import dataclass, field

PENALTIES = ("signed", "abs")
LAMBDA_SCHEDULES = ("cosine", "constant")  # the multipliers' lr: the routers' warmup + cosine decay, or flat


@dataclass
class TrainConfig:
    data: str
    out: str
    model: str = "default"  # 'default' or a transformers model directory (ignored when a model is passed)
    steps: int = 300
    max_len: int = 4096
    batch_size: int = 1  # samples per micro-batch and process
    grad_accum: int = 1  # micro-batches per step and process
    lr: float = 5e-3  # the paper's 5e-4 leaves routing static here (docs/training.md)
    lambda_lr: float = 5e-2  # the paper's 1e-3 moves a multiplier by at most 0.15 in 300 steps
    weight_decay: float = 0.1
    warmup: float = 0.2  # fraction of steps of linear warmup, then cosine decay to 0
    penalty: str = "signed"  # linear term of the Lagrangian: "signed" (paper) or "abs" (public code)
    lambda_schedule: str = "cosine"  # multipliers' lr: "cosine" (the routers' warmup + decay) or "constant"
    calibration_samples: int = 64  # training prompts that measure the input statistics of norm="standardize"
    targets: dict[str, float] = field(default_factory=dict)  # category or task -> target MSR
    seed: int = 0
    resume: bool = False
    save_every: int = 50
    keep_checkpoints: int = 2
    tau_schedule: str | None = None  # None: the ElasticConfig's (default 'exp', see docs/training.md)
    static_gate: bool = False  # learn one logit per head (baseline) instead of per-prompt routers
    checkpointing: bool = False  # activation checkpointing of the decoder layers
    cudnn_sdpa: bool = False  # cuDNN attention plans per sequence length: slow on varied lengths (docs/training.md)
    elastic_config: str | None = None  # ElasticConfig JSON file or text for attach (default config otherwise)
    device: str | None = None  # None: this process's GPU if there is one, else the CPU
    progress: bool = True

    def check(self) -> None:
        for name in ("steps", "max_len", "batch_size", "grad_accum", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        for name in ("lr", "lambda_lr"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup={self.warmup} must be a fraction of the steps in [0, 1)")
        if self.penalty not in PENALTIES:
            raise ValueError(f"penalty={self.penalty!r} is not known; use one of {PENALTIES}")
        if self.lambda_schedule not in LAMBDA_SCHEDULES:
            raise ValueError(f"lambda_schedule={self.lambda_schedule!r} is not known; use one of {LAMBDA_SCHEDULES}")
        if self.calibration_samples < 2:
            raise ValueError(f"calibration_samples={self.calibration_samples} must be at least 2")
