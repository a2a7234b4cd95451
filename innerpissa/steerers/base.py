"""The `Steerer` protocol: every steering method (InnerPiSSA and the baselines) behind one interface.

The evaluator only talks to this protocol: it asks a steerer to `fit` on contrastive pairs, then for
each coefficient c it formats prompts through `messages(msgs, c)` (identity except for prompting
baselines) and runs the model inside `with steerer.steer(model, c):`. c = 0 must be the base model; a steerer
whose c = 0 is the base model bit for bit may say so with `exact_at_zero = True`, and scoring then reuses the base
model's c = 0 forwards (`eval.score`).

A built-in steerer also describes itself (`SteererBase`): its params model, whether its seed matters, whether its fit
trains (and so checkpoints), which run-wide settings map into which params, its aliases. The experiments layer reads
these facts instead of keeping lists of method names, so a new method is one module here.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, ContextManager, Iterator, Protocol, runtime_checkable

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..concepts import ContrastPairs
from ..config import parse_section, set_path, validation_message
from ..io import atomic_save_tensors, atomic_write_json, load_tensors

Messages = list[dict[str, str]]


@runtime_checkable
class Steerer(Protocol):
    """A steering method: fit on pairs, then steer by a real coefficient c (c = 0 is the base model)."""

    name: str

    def fit(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pairs: ContrastPairs,
            val: ContrastPairs | None = None, *, ckpt_dir: Path | None = None, resume: bool = False,
            progress: bool = True) -> None:
        """Learn whatever the method needs from the contrastive pairs (no evaluation data). A `trainable` steerer
        checkpoints into `ckpt_dir` and, with `resume`, continues from the checkpoint there; others ignore both."""

    def steer(self, model: PreTrainedModel, c: float) -> ContextManager[None]:
        """Context manager: every forward of `model` inside is steered with coefficient c."""

    def messages(self, messages: Messages, c: float) -> Messages:
        """Chat messages to send at coefficient c (identity except for prompt-based methods)."""

    def params(self) -> dict[str, Any]:
        """Hyper-parameters, for the record (JSON-serialisable)."""

    def save(self, path: Path) -> None:
        """Persist the fitted state (safetensors + JSON) so a rerun can skip fitting."""

    def load(self, model: PreTrainedModel, path: Path) -> None:
        """Restore the fitted state written by `save` onto `model`."""


class SteererParams(BaseModel):
    """Base of each steerer's `Params`: its hyper-parameters, one pydantic model (a typo or bad value raises)."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Preset:
    """A named ablation of a steerer's run: `delta` maps dotted params paths ("adapter.rotate_v") to values;
    `group`/`value` place it in a family (depth, rank, ...) for plots. The steerer that declares it applies it
    (`SteererBase.apply_preset`)."""

    name: str
    doc: str
    delta: dict[str, Any] = field(default_factory=dict)
    group: str = "component"
    value: float | None = None


class SteererBase:
    """What a built-in steerer says about itself, as class attributes and class methods (no instance needed).

    The experiments layer (runs, sweeps, compare, tables) reads these instead of lists of method names:

    - `Params`: the hyper-parameters, one pydantic model; `sections` names the params that are partial config
      sections (dicts validated field by field against their config class, dotted paths "train.steps" in sweeps);
      `recorded` names params only recorded by whoever fits the steerer (never a run's params).
    - `seed_param`: the dotted params path the run's seed goes to; None for a deterministic method, whose seeds
      would all be the same fit (runs keep one seed). The default, "seed", is the safe one for a new method: a
      method that takes no seed fails loudly instead of silently repeating one fit.
    - `trainable`: the fit trains (an optimiser loop): it checkpoints into `fit(ckpt_dir=...)` and can resume.
    - `exact_at_zero`: c = 0 is the base model bit for bit (scoring may reuse base forwards).
    - `foldable`: the steering lives in InnerPiSSA layers, so `merge` and `export` can freeze it at one c.
    - `discrete_coeffs`: the only coefficients defined (prompting: on or off), None for any real c.
    - `overrides`: run-wide settings a comparison may set for every trained method ("steps", "precision") and
      the params path each maps to here; a setting not named here does not apply to this method.
    - `aliases`: names that mean this method with some params (`prompt_short` = prompt with variant short).
    - `role`: "method" (the method the others are paired against), "prompting" (the prompting reference) or
      "null" (the random-direction control); `rank`: the method's place in paper tables (lower first).
    - `presets`: named ablations of this method's runs (`Preset`).
    """

    name: ClassVar[str] = "base"
    Params: ClassVar[type[SteererParams]] = SteererParams
    sections: ClassVar[dict[str, type[BaseModel]]] = {}
    recorded: ClassVar[tuple[str, ...]] = ()
    seed_param: ClassVar[str | None] = "seed"
    trainable: ClassVar[bool] = False
    exact_at_zero: ClassVar[bool] = False
    foldable: ClassVar[bool] = False
    discrete_coeffs: ClassVar[tuple[float, ...] | None] = None
    overrides: ClassVar[dict[str, str]] = {}
    aliases: ClassVar[dict[str, dict[str, Any]]] = {}
    role: ClassVar[str | None] = None
    rank: ClassVar[float] = math.inf
    presets: ClassVar[dict[str, Preset]] = {}

    @classmethod
    def parse(cls, params: dict[str, Any]) -> SteererParams:
        """`Params(**params)`; an unknown key or a bad value raises one ValueError line naming it."""
        unknown = [k for k in params if k not in cls.Params.model_fields]
        if unknown:
            raise ValueError(f"bad hyper-parameters for method {cls.name!r} (unexpected keyword argument "
                             f"{unknown[0]!r}); valid: {', '.join(cls.Params.model_fields)}")
        try:
            return cls.Params(**params)
        except ValidationError as e:
            raise ValueError(f"bad hyper-parameters for method {cls.name!r}: {validation_message(e)}") from None

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> None:
        """Check a run's params without building the steerer: every key names a field (sections: every key in
        them names a field of the section's config), every value is valid; one ValueError line otherwise."""
        flat = [k for k in cls.Params.model_fields if k not in cls.sections and k not in cls.recorded]
        for key, sub in params.items():
            section = cls.sections.get(key)
            if section is not None:
                if not isinstance(sub, dict):
                    raise ValueError(f"params.{key} for method {cls.name} must be a mapping of {section.__name__} fields")
                parse_section(section, sub, key)
            elif key not in flat:
                valid = sorted(flat) + [f"{k}.*" for k in cls.sections]
                raise ValueError(f"unknown config path {key!r} for method {cls.name}: use {', '.join(valid)}")
        cls.parse(params)

    @classmethod
    def explicit_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """A run's params with what a changing default would change spelled out (InnerPiSSA: its recipe), so a
        stored config keeps its meaning. Returns `params` itself when there is nothing to add."""
        return params

    @classmethod
    def stored_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """The params of a run stored before `explicit_params` spelled something out, with the value that run
        used (not today's default). Returns `params` itself when nothing is missing."""
        return params

    @classmethod
    def resolved(cls, params: dict[str, Any]) -> dict[str, Any] | None:
        """What the params mean beyond their text (a named recipe resolved onto the config defaults), hashed with
        the run so that editing a recipe or a default never reuses a fit made with the old one; None if the
        params say it all."""
        return None

    @classmethod
    def data_recipe(cls, params: dict[str, Any]) -> str | None:
        """The recipe whose data settings shape the contrastive pairs this method fits on (None: the defaults)."""
        return None

    @classmethod
    def tuned_params(cls, params: dict[str, Any], chosen: Callable[[], Any]) -> dict[str, Any]:
        """The params a run of the plain method name (not an alias) uses on one model and dataset. `chosen()`
        is the caller's record of the variant measured best there (the evaluation layer's prompting gate), None
        where none was measured; it is only called by a method that a measurement tunes."""
        return params

    @classmethod
    def apply_preset(cls, preset: Preset, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The method and params of the ablation `preset` of a run with `params`."""
        for path, value in preset.delta.items():
            params = set_path(params, path, value)
        return cls.name, params

    def messages(self, messages: Messages, c: float) -> Messages:
        return messages


class TensorSteerer(SteererBase):
    """Base for methods whose fitted state is a dict of tensors (vectors, adapters): save/load for free."""

    name = "tensor"

    def __init__(self, **hparams: Any) -> None:
        self.hparams = hparams
        self.tensors: dict[str, torch.Tensor] = {}

    def params(self) -> dict[str, Any]:
        return dict(self.hparams)

    def save(self, path: Path) -> None:
        save_meta(self, path)
        atomic_save_tensors(self.tensors, Path(path) / "steerer.safetensors")

    def load(self, model: PreTrainedModel, path: Path) -> None:
        self.tensors = load_tensors(Path(path) / "steerer.safetensors")


def save_meta(steerer: Steerer, path: Path) -> None:
    """Write steerer.json ({"method", "params"}) so `load_steerer` can rebuild the steerer."""
    atomic_write_json(Path(path) / "steerer.json", {"method": steerer.name, "params": steerer.params()})


@contextlib.contextmanager
def forward_hooks(handles_factory: Any) -> Iterator[None]:
    """Register hooks via `handles_factory()` (returns handles) and always remove them on exit."""
    handles = handles_factory()
    try:
        yield
    finally:
        for h in handles:
            h.remove()
