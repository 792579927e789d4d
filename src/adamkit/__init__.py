"""adamkit: the Adam family of optimizers for PyTorch.

Drop-in replacements for ``torch.optim.Adam``, ``AdamW``, ``RAdam``, ``NAdam`` and ``Adamax``,
proven equal to torch and to a NumPy reference (:mod:`adamkit.reference`), and learning-rate
schedules that compose and resume exactly (:mod:`adamkit.schedules`, :class:`Scheduler`).
"""

from . import schedules
from .optim import (
    Adam,
    Adamax,
    AdamW,
    LoadReport,
    NAdam,
    RAdam,
    Rectification,
    StateMemory,
    full_precision_state,
    radam_rectification,
    rectification,
    state_memory,
)
from .schedules import Scheduler, get_lr, plot_schedule, scale_lr, set_lr
from .tools import LRFindResult, Telemetry, lr_find, param_groups, plot_telemetry

__version__ = "0.1.0"

__all__ = [
    "Adam",
    "AdamW",
    "Adamax",
    "LRFindResult",
    "LoadReport",
    "NAdam",
    "RAdam",
    "Rectification",
    "Scheduler",
    "StateMemory",
    "Telemetry",
    "__version__",
    "full_precision_state",
    "get_lr",
    "lr_find",
    "param_groups",
    "plot_schedule",
    "plot_telemetry",
    "radam_rectification",
    "rectification",
    "scale_lr",
    "schedules",
    "set_lr",
    "state_memory",
]
