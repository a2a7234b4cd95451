"""`dpo_lora`: a LoRA adapter trained with DPO on the persona preference pairs; c scales the adapter.

The adapter is the `lora` baseline's (peft `lora.Linear` layers from `peft_lora`, same modules, layers and
rank): y = W x + b + c·(s·B A) x. It is trained with the standard DPO loss (Rafailov et al. 2023) at c = +1
only, on the same preference data as `bipo` (see `_preference`): y_w (the positive persona's continuation)
over y_l given the neutral context. c = −1 applies the negated weight change, c = 0 is the base model.

The loss is `loss.dpo`, not trl's: trl 1.16 computes it inside `DPOTrainer._compute_loss` (a method of an HF
Trainer that needs `datasets` and runs its own model forward), which cannot train our signed-coefficient
adapter; the loss itself is one line, tested against a hand-computed value.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..concepts import ContrastPairs
from ..io import atomic_write_json
from ..loop import Loop
from ..objectives.dpo import DPOObjective
from ._preference import PreferenceConfig, fit_record, loop_config, preference_data
from .peft_lora import LoraParams, PeftSteerer, PeftTrainable


class DpoLoraParams(PreferenceConfig, LoraParams):
    """The `lora` baseline's adapter and the DPO settings of `_preference`."""


class DpoLoraSteerer(PeftSteerer):
    """LoRA adapter trained with DPO (output level) instead of ReprPO (hidden states); c scales its weight change."""

    name = "dpo_lora"
    Params = DpoLoraParams
    sections = {}  # flat DPO settings, not the ReprPO sections of the LoRA family
    seed_param = "seed"  # the adapter's init and the batches drawn each step
    overrides = {"steps": "steps"}
    rank = math.inf  # after the ReprPO-trained methods in tables (by name)
    variant = "lora"

    def __init__(self, **params: Any) -> None:
        self.p = self.parse(params)
        self.cfg = PreferenceConfig(**{k: getattr(self.p, k) for k in PreferenceConfig.model_fields})
        self.r, self.alpha = self.p.r, self.p.alpha
        self.target_modules, self.layer_range = tuple(self.p.target_modules), tuple(self.p.layer_range)
        self.handle: PeftTrainable | None = None
        self.result: dict[str, Any] | None = None

    def params(self) -> dict[str, Any]:
        return self.p.model_dump(mode="json")

    def _handle(self, model: PreTrainedModel) -> PeftTrainable:
        return PeftTrainable(model, self.variant, self.r, self.alpha, self.target_modules, self.layer_range, self.cfg.seed)

    def fit(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase, pairs: ContrastPairs,
            val: ContrastPairs | None = None, *, ckpt_dir: Path | None = None, resume: bool = False,
            progress: bool = True) -> None:
        """Train the adapter with the shared loop (checkpoints in `ckpt_dir`, `resume` continues them)."""
        data = preference_data(model, tok, pairs, self.cfg, progress)  # before attaching: the base model generates
        self.handle = self._handle(model)
        self.handle.attach()
        objective = DPOObjective(model, data, self.handle.parameters(), self.handle.steer, self.cfg,
                                 bidirectional=False)
        history = Loop(objective, loop_config(self.cfg), ckpt_dir, progress, desc="dpo").run(resume=resume).history
        self.result = fit_record(model, tok, pairs, val, data, history, self.handle.steer, self.cfg, progress)

    def save(self, path: Path) -> None:
        super().save(path)
        if self.result is not None:
            atomic_write_json(Path(path) / "train.json", self.result)


STEERER = DpoLoraSteerer
