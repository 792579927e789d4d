"""adamkit's optimizers: one base, one rule per algorithm, several execution paths."""

from ._checkpoint import STATE_FORMAT, LoadReport
from ._precision import StateMemory, full_precision_state, state_memory
from .adafactor import Adafactor
from .adam import Adam, AdamW, StableAdamW
from .adamax import Adamax
from .ademamix import AdEMAMix
from .adopt import ADOPT
from .nadam import NAdam
from .radam import RAdam, Rectification, radam_rectification, rectification
from .schedulefree import ScheduleFreeAdamW, evaluation_mode

__all__ = [
    "ADOPT",
    "STATE_FORMAT",
    "AdEMAMix",
    "Adafactor",
    "Adam",
    "AdamW",
    "Adamax",
    "LoadReport",
    "NAdam",
    "RAdam",
    "Rectification",
    "ScheduleFreeAdamW",
    "StableAdamW",
    "StateMemory",
    "evaluation_mode",
    "full_precision_state",
    "radam_rectification",
    "rectification",
    "state_memory",
]
