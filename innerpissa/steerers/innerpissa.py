"""The method: an InnerPiSSA adapter trained with ReprPO, behind the Steerer protocol."""

from __future__ import annotations

import contextlib
import csv
import io
from pathlib import Path
from typing import Any, ContextManager

from pydantic import Field
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .. import adapter as A
from ..concepts import ContrastPairs
from ..config import AdapterConfig, LossConfig, TrainConfig, set_path
from ..recipes import DEFAULT_RECIPE, RECIPES, get_recipe, resolve
from ..io import atomic_write_text
from ..train import TrainResult, Trainer
from ._ablations import PRESETS, to_lora
from .base import Preset, SteererBase, SteererParams, save_meta


LEGACY_RECIPE = "reprpo-v0"  # InnerPiSSA runs stored before the recipe was always explicit all trained with it


def split_val(pairs: ContrastPairs, val: ContrastPairs | None, frac: float = 0.15) -> tuple[ContrastPairs, ContrastPairs]:
    """Use `val` if given, else hold out the last `frac` of the pairs (by position) for validation."""
    if val is not None and len(val):
        return pairs, val
    n_val = max(1, int(len(pairs) * frac))
    return pairs.subset(list(range(len(pairs) - n_val))), pairs.subset(list(range(len(pairs) - n_val, len(pairs))))


class InnerPiSSAParams(SteererParams):
    """A recipe and partial `adapter`/`loss`/`train` sections on top of it (each validated against its config)."""

    recipe: str | None = Field(None, description="a preset of innerpissa.recipes (default DEFAULT_RECIPE)")
    adapter: dict[str, Any] | None = None
    loss: dict[str, Any] | None = None
    train: dict[str, Any] | None = None
    model: str | None = Field(None, description="recorded only: the base-model spec a saved adapter was trained on")
    concept: str | None = Field(None, description="recorded only: the concept a saved adapter was trained on")


class InnerPiSSASteerer(SteererBase):
    """Fit = attach an InnerPiSSA adapter and train it with ReprPO; steer(c) sets the adapter coefficient."""

    name = "innerpissa"
    Params = InnerPiSSAParams
    sections = {"adapter": AdapterConfig, "loss": LossConfig, "train": TrainConfig}
    recorded = ("model", "concept")
    seed_param = "train.seed"
    trainable = True
    foldable = True
    exact_at_zero = True  # c = 0 is the base model bit for bit (tested): scoring may reuse base forwards
    overrides = {"steps": "train.steps", "precision": "train.precision"}
    # `innerpissa:<recipe>`: the method under each recipe (Table 1's per-recipe rows; `innerpissa:<default>` is
    # plain `innerpissa`, one hash)
    aliases = {f"innerpissa:{r}": {"recipe": r} for r in RECIPES}
    role = "method"
    rank = 0
    presets = PRESETS

    def __init__(self, recipe: str | None = None, **params: Any) -> None:
        """`recipe` names a preset (innerpissa.recipes, default DEFAULT_RECIPE); the sections override its fields
        and are validated field by field (a typo raises, naming the valid fields); `model`/`concept` are
        only recorded (the base-model spec and concept name a saved adapter was trained with)."""
        p = self.parse({"recipe": recipe, **params})
        self.recipe = p.recipe or DEFAULT_RECIPE
        self.adapter_cfg, self.loss_cfg, self.train_cfg = resolve(self.recipe, p.adapter, p.loss, p.train)
        self.extra = {k: v for k, v in (("model", p.model), ("concept", p.concept)) if v is not None}
        self.model: PreTrainedModel | None = None
        self.result: TrainResult | None = None

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> None:
        """The generic check, plus: the recipe exists."""
        super().check_params(params)
        if "recipe" in params:
            get_recipe(params["recipe"])  # an unknown name raises, listing the recipes

    @classmethod
    def explicit_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """An InnerPiSSA run always names its recipe, so a stored config keeps its meaning when the default
        recipe changes (and `innerpissa` equals `innerpissa:<default>`, one hash)."""
        out = dict(params)
        out.setdefault("recipe", DEFAULT_RECIPE)
        return out

    @classmethod
    def stored_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Runs stored before the recipe was always explicit all trained with LEGACY_RECIPE."""
        return params if "recipe" in params else {**params, "recipe": LEGACY_RECIPE}

    @classmethod
    def resolved(cls, params: dict[str, Any]) -> dict[str, Any]:
        """The recipe resolved onto the config defaults, with the run's sections on top."""
        cfgs = resolve(params["recipe"], params.get("adapter"), params.get("loss"), params.get("train"))
        return {name: c.model_dump(mode="json") for name, c in zip(("adapter", "loss", "train"), cfgs)}

    @classmethod
    def data_recipe(cls, params: dict[str, Any]) -> str | None:
        return params["recipe"]

    @classmethod
    def apply_preset(cls, preset: Preset, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The delta's paths set on `params`; its "method" key (no_svd) swaps to that method, with `to_lora`'s params."""
        method = cls.name
        for path, value in preset.delta.items():
            if path == "method":
                method, params = value, to_lora(params)
            else:
                params = set_path(params, path, value)
        return method, params

    def params(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "adapter": self.adapter_cfg.model_dump(mode="json"),
            "loss": self.loss_cfg.model_dump(mode="json"),
            "train": self.train_cfg.model_dump(mode="json"),
            **self.extra,
        }

    def fit(
        self,
        model: PreTrainedModel,
        tok: PreTrainedTokenizerBase,
        pairs: ContrastPairs,
        val: ContrastPairs | None = None,
        *,
        ckpt_dir: Path | None = None,
        resume: bool = False,
        progress: bool = True,
    ) -> None:
        train_pairs, val_pairs = split_val(pairs, val)
        trainer = Trainer(model, tok, train_pairs, val_pairs, self.adapter_cfg, self.loss_cfg, self.train_cfg, ckpt_dir, progress)
        self.result = trainer.run(resume=resume)
        self.model = model

    def steer(self, model: PreTrainedModel, c: float) -> ContextManager[None]:
        if c == 0:
            return contextlib.nullcontext()  # c = 0 is the base model by construction
        return A.steer(model, c)

    def save(self, path: Path) -> None:
        if self.model is None:
            raise ValueError("nothing to save: fit or load the steerer first")
        path = Path(path)
        extra = {}
        if self.result is not None:
            extra = {"train": {"best_step": self.result.best_step, "best_val": self.result.best_val,
                               "sign_flipped": self.result.sign_flipped, "val_shift": self.result.val_shift,
                               "precision": self.result.precision}}
            if self.result.history:
                buf = io.StringIO()
                keys = sorted({k for row in self.result.history for k in row})
                w = csv.DictWriter(buf, fieldnames=keys)
                w.writeheader()
                w.writerows(self.result.history)
                atomic_write_text(path / "train_log.csv", buf.getvalue())
        A.save_adapter(self.model, path, extra=extra)
        save_meta(self, path)

    def load(self, model: PreTrainedModel, path: Path) -> None:
        A.load_adapter(model, path)
        self.model = model


STEERER = InnerPiSSASteerer
