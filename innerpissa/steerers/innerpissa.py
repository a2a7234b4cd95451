"""The method: an InnerPiSSA adapter trained with ReprPO, behind the Steerer protocol."""

from __future__ import annotations

import contextlib
import csv
import io
from pathlib import Path
from typing import Any, ContextManager

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .. import adapter as A
from ..concepts import ContrastPairs
from ..recipes import DEFAULT_RECIPE, resolve
from ..io import atomic_write_text
from ..train import TrainResult, Trainer
from .base import Messages, save_meta


def split_val(pairs: ContrastPairs, val: ContrastPairs | None, frac: float = 0.15) -> tuple[ContrastPairs, ContrastPairs]:
    """Use `val` if given, else hold out the last `frac` of the pairs (by position) for validation."""
    if val is not None and len(val):
        return pairs, val
    n_val = max(1, int(len(pairs) * frac))
    return pairs.subset(list(range(len(pairs) - n_val))), pairs.subset(list(range(len(pairs) - n_val, len(pairs))))


class InnerPiSSASteerer:
    """Fit = attach an InnerPiSSA adapter and train it with ReprPO; steer(c) sets the adapter coefficient."""

    name = "innerpissa"
    exact_at_zero = True  # c = 0 is the base model bit for bit (tested): scoring may reuse base forwards

    def __init__(self, recipe: str | None = None, adapter: dict | None = None, loss: dict | None = None,
                 train: dict | None = None, model: str | None = None, concept: str | None = None) -> None:
        """`recipe` names a preset (innerpissa.recipes, default DEFAULT_RECIPE); the sections override its fields
        and are validated field by field (a typo raises, naming the valid fields); `model`/`concept` are
        only recorded (the base-model spec and concept name a saved adapter was trained with)."""
        self.recipe = recipe or DEFAULT_RECIPE
        self.adapter_cfg, self.loss_cfg, self.train_cfg = resolve(self.recipe, adapter, loss, train)
        self.extra = {k: v for k, v in (("model", model), ("concept", concept)) if v is not None}
        self.model: PreTrainedModel | None = None
        self.result: TrainResult | None = None

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

    def messages(self, messages: Messages, c: float) -> Messages:
        return messages

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
