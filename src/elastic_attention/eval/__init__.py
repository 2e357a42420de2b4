"""Evaluation: task generators (RULER, LongBench, make-data mix), scoring, the runner and its report.

Heavy pieces load on first use. Passkey prompts live in `elastic_attention.passkey` (the retrieval
scores of the static baselines use them too).
"""

_LAZY = {"evaluate": "command", "run_eval": "runner", "prepare_model": "runner", "EvalResults": "runner",
         "write_report": "report", "markdown_table": "report", "ruler_samples": "ruler",
         "longbench_samples": "longbench", "EvalSample": "sample"}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
