"""Training tools built on adamkit's public API: parameter groups from a model, and more."""

from .groups import NO_DECAY_MODULES, param_groups
from .lr_find import LRFindResult, lr_find

__all__ = ["NO_DECAY_MODULES", "LRFindResult", "lr_find", "param_groups"]
