"""adamkit's optimizers: one base, one rule per algorithm, several execution paths."""

from .adam import Adam, AdamW
from .adamax import Adamax
from .nadam import NAdam
from .radam import RAdam, rectification

__all__ = ["Adam", "AdamW", "Adamax", "NAdam", "RAdam", "rectification"]
