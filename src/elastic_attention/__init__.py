"""elastic-attention: per-prompt routing of KV heads between full and sparse attention."""

from .adapter import load_router, save_router
from .cache import ElasticCache
from .config import ElasticConfig
from .control import force_mode, sparsity_bias
from .integrations.hf import SUPPORTED_MODEL_TYPES, attach, detach, routers
from .metrics import RoutingStats, routing_stats
from .router import AttentionRouter, TemperatureSchedule

__version__ = "0.1.0"

__all__ = ["AttentionRouter", "ElasticCache", "ElasticConfig", "RoutingStats", "SUPPORTED_MODEL_TYPES",
           "TemperatureSchedule", "attach", "detach", "force_mode", "load_router", "routers", "routing_stats",
           "save_router", "sparsity_bias"]
