"""Steering methods behind one `Steerer` protocol; `get_steerer(name)` builds one by name."""

from .base import Steerer, TensorSteerer

__all__ = ["Steerer", "TensorSteerer"]
