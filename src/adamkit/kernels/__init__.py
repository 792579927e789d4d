"""Compiled kernels: the fused CPU step (``fused_cpu.c``), built at first use and cached."""

from ._build import fused_library, unavailable_reason

__all__ = ["fused_library", "unavailable_reason"]
