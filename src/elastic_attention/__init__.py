"""elastic-attention: per-prompt routing of KV heads between full and sparse attention.

The public names load on first use, so importing the package (or running `elastic-attn --help`)
does not pay for torch and transformers until something needs them.
"""

import importlib
import importlib.util

__version__ = "0.1.0"

_LAZY = {"load_router": "adapter", "save_router": "adapter", "ElasticCache": "cache", "ElasticConfig": "config",
         "force_mode": "control", "sparsity_bias": "control", "SUPPORTED_MODEL_TYPES": "integrations.hf",
         "attach": "integrations.hf", "detach": "integrations.hf", "routers": "integrations.hf",
         "RoutingStats": "metrics", "routing_stats": "metrics", "AttentionRouter": "router",
         "TemperatureSchedule": "router"}

__all__ = ["AttentionRouter", "ElasticCache", "ElasticConfig", "RoutingStats", "SUPPORTED_MODEL_TYPES",
           "TemperatureSchedule", "attach", "detach", "force_mode", "load_router", "routers", "routing_stats",
           "save_router", "sparsity_bias"]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    # Submodules too (ea.integrations.hf, ea.training...), as when the package imported them eagerly.
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
