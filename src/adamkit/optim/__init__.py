"""adamkit's optimizers: one base, one rule per algorithm, several execution paths."""

from ._checkpoint import STATE_FORMAT, LoadReport
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
    "rectification",
]
