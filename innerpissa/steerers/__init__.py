"""Steering methods behind one `Steerer` protocol. Each method is one module here exposing `STEERER`.

`get_steerer("pca", layers=[...])` builds one by name; adding a method means adding one file. Each class says what
it is (`base.SteererBase`: params model, seeding, training, aliases, ...), so the experiments layer needs no list of
method names. A fitted steerer saved to a directory writes `steerer.json` ({"method", "params"}) beside its
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
from .base import Preset, Steerer, SteererBase, TensorSteerer

_PRIVATE = {"base"}
DEFAULT_METHOD = "innerpissa"  # a run that names no method runs this one


def available() -> list[str]:
    """Names of all steering methods (modules in this package that define STEERER)."""
    names = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_") and m.name not in _PRIVATE]
    return sorted(n for n in names if hasattr(importlib.import_module(f"{__name__}.{n}"), "STEERER"))


def steerer_class(name: str) -> type[SteererBase]:
    """The class of method `name` (its STEERER); unknown names list the valid ones."""
    cls = None
    if isinstance(name, str) and name.isidentifier() and not name.startswith("_") and name not in _PRIVATE:
        try:
            cls = getattr(importlib.import_module(f"{__name__}.{name}"), "STEERER", None)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":  # a missing dependency of the module, not a missing method
                raise
    if cls is None:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(available())}")
    return cls


class UnknownMethod(SteererBase):
    """The facts of a method no module here defines (a test's steerer, a method since removed): `SteererBase`'s
    defaults, its params unchecked, so records and runs of it still load and hash as before."""

    name = "unknown"

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> None:
        """Nothing to check against: the method's params model is not known here."""


def method_class(name: str) -> type[SteererBase]:
    """The class to read method `name`'s facts from (`steerer_class`); `UnknownMethod` for a name no module here
    defines."""
    try:
        return steerer_class(name)
    except ValueError:
        return UnknownMethod


def aliases() -> dict[str, tuple[str, dict[str, Any]]]:
    """Every method's aliases: {alias: (method, params)} (`SteererBase.aliases`)."""
    return {a: (n, dict(p)) for n in available() for a, p in steerer_class(n).aliases.items()}


def with_role(role: str) -> str | None:
    """The method that plays `role` ("method", "prompting", "null"; `SteererBase.role`), None if none does."""
    return next((n for n in available() if steerer_class(n).role == role), None)


def presets() -> dict[str, tuple[str, Preset]]:
    """Every method's ablation presets: {preset name: (method, Preset)}."""
    return {p: (n, preset) for n in available() for p, preset in steerer_class(n).presets.items()}


def get_steerer(name: str, **hparams: Any) -> Steerer:
    """Construct the steerer `name` with hyper-parameters; unknown names list the valid ones."""
    cls = steerer_class(name)
    try:
        return cls(**hparams)
    except TypeError as e:  # an unknown keyword of a class without a params model: name the valid ones
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


__all__ = ["DEFAULT_METHOD", "Preset", "Steerer", "SteererBase", "TensorSteerer", "aliases", "available", "get_steerer",
           "load_steerer", "method_class", "presets", "steerer_class", "with_role"]
