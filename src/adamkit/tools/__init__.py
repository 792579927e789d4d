"""Training tools built on adamkit's public API: parameter groups from a model, and more."""

from .groups import NO_DECAY_MODULES, param_groups
from .lr_find import LRFindResult, lr_find
from .telemetry import Telemetry, plot_telemetry, read_telemetry

__all__ = [
    "NO_DECAY_MODULES",
    "LRFindResult",
    "Telemetry",
    "lr_find",
    "param_groups",
    "plot_telemetry",
    "read_telemetry",
]
