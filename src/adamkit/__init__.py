"""adamkit: the Adam family of optimizers for PyTorch.

Drop-in replacements for ``torch.optim.Adam``, ``AdamW``, ``RAdam``, ``NAdam`` and ``Adamax``,
proven equal to torch and to a NumPy reference (:mod:`adamkit.reference`).
"""

from .optim import Adam, Adamax, AdamW, NAdam, RAdam, rectification

__version__ = "0.1.0"

__all__ = ["Adam", "AdamW", "Adamax", "NAdam", "RAdam", "__version__", "rectification"]
