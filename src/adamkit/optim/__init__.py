"""adamkit's optimizers: one base, one rule per algorithm, several execution paths."""

from ._checkpoint import STATE_FORMAT, LoadReport
from ._precision import StateMemory, full_precision_state, state_memory
from .adam import Adam, AdamW
from .adamax import Adamax
from .nadam import NAdam
from .radam import RAdam, rectification

__all__ = [
    "STATE_FORMAT",
    "Adam",
    "AdamW",
    "Adamax",
    "LoadReport",
    "NAdam",
    "RAdam",
    "StateMemory",
    "full_precision_state",
    "rectification",
    "state_memory",
]
