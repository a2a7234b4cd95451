"""Steering methods behind one `Steerer` protocol. Each method is one module here exposing `STEERER`.

`get_steerer("pca", layers=[...])` builds one by name; adding a method means adding one file.
A fitted steerer saved to a directory writes `steerer.json` ({"method", "params"}) beside its
tensors, so `load_steerer(model, dir)` can rebuild it without knowing the method in advance.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel

from ..io import read_json
from .base import Steerer, TensorSteerer

_PRIVATE = {"base"}


def available() -> list[str]:
    """Names of all steering methods (modules in this package that define STEERER)."""
    names = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_") and m.name not in _PRIVATE]
    return sorted(n for n in names if hasattr(importlib.import_module(f"{__name__}.{n}"), "STEERER"))


def get_steerer(name: str, **hparams: Any) -> Steerer:
    """Construct the steerer `name` with hyper-parameters; unknown names list the valid ones."""
    names = available()
    if name not in names:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(names)}")
    cls = importlib.import_module(f"{__name__}.{name}").STEERER
    try:
        return cls(**hparams)
    except TypeError as e:  # an unknown keyword: name the valid ones
        valid = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs", "extra")]
        raise ValueError(f"bad hyper-parameters for method {name!r} ({e}); valid: {', '.join(valid)}") from None


def load_steerer(model: PreTrainedModel, path: str | Path) -> Steerer:
    """Rebuild a fitted steerer from a directory written by its `save` (reads steerer.json)."""
    path = Path(path)
    meta = path / "steerer.json"
    if not meta.is_file():
        raise FileNotFoundError(f"{path} is not a saved steerer (no steerer.json); pass a directory written by train/compare")
    info = read_json(meta)
    steerer = get_steerer(info["method"], **info.get("params", {}))
    steerer.load(model, path)
    return steerer


__all__ = ["Steerer", "TensorSteerer", "available", "get_steerer", "load_steerer"]
