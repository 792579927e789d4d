"""Training tools built on adamkit's public API: parameter groups from a model, and more."""

from .groups import NO_DECAY_MODULES, param_groups

__all__ = ["NO_DECAY_MODULES", "param_groups"]
