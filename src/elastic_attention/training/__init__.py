"""Router training: data, the Lagrangian objective, the loop (single process or FSDP2), offline data."""

from .data import DEFAULT_TARGETS, load_records
from .trainer import TrainConfig, train

__all__ = ["DEFAULT_TARGETS", "TrainConfig", "load_records", "train"]
