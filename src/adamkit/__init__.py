"""adamkit: the Adam family of optimizers for PyTorch.

Drop-in replacements for ``torch.optim.Adam``, ``AdamW``, ``RAdam``, ``NAdam`` and ``Adamax``,
proven equal to torch and to a NumPy reference (:mod:`adamkit.reference`), and learning-rate
schedules that compose and resume exactly (:mod:`adamkit.schedules`, :class:`Scheduler`).
"""

from . import optim as _optim
from . import schedules
from .optim import *  # noqa: F403  (every optimizer: a new one is exported in optim alone)
from .schedules import Scheduler, get_lr, plot_schedule, scale_lr, set_lr
from .tools import LRFindResult, Telemetry, lr_find, param_groups, plot_telemetry

__version__ = "0.1.0"

__all__ = [
    *_optim.__all__,
    "LRFindResult",
    "Scheduler",
    "Telemetry",
    "__version__",
    "get_lr",
    "lr_find",
    "param_groups",
    "plot_schedule",
    "plot_telemetry",
    "scale_lr",
    "schedules",
    "set_lr",
]
