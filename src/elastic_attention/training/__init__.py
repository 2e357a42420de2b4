"""Router training: data, the Lagrangian objective, the loop (single process or FSDP2), offline data.

The names below load on first use (the command line imports this package without torch).
"""

_LAZY = {"DEFAULT_TARGETS": "data", "load_records": "data", "TrainConfig": "options", "train": "trainer"}

__all__ = ["DEFAULT_TARGETS", "TrainConfig", "load_records", "train"]


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
