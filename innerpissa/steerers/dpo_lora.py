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

from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..concepts import ContrastPairs
from ..io import atomic_write_json
from ..loop import Loop
from ..objectives.dpo import DPOObjective
from ._preference import fit_record, loop_config, preference_config, preference_data
from .peft_lora import PeftSteerer, PeftTrainable


class DpoLoraSteerer(PeftSteerer):
    """LoRA adapter trained with DPO (output level) instead of ReprPO (hidden states); c scales its weight change."""

    name = "dpo_lora"
    variant = "lora"

    def __init__(self, r: int = 8, alpha: float = 16.0, target_modules: tuple[str, ...] | list[str] = ("o_proj", "down_proj"),
                 layer_range: tuple[float, float] | list[float] = (0.3, 0.8), beta: float = 0.1, lr: float = 1e-3,
                 steps: int = 24, batch_size: int = 8, gen_tokens: int = 16, max_length: int = 128,
                 gen_batch_size: int = 32, seed: int = 0) -> None:
        self.cfg = preference_config(self.name, beta=beta, lr=lr, steps=steps, batch_size=batch_size,
                                     gen_tokens=gen_tokens, max_length=max_length, gen_batch_size=gen_batch_size,
                                     seed=seed)
        self.r, self.alpha = r, alpha
        self.target_modules, self.layer_range = tuple(target_modules), tuple(layer_range)
        self.handle: PeftTrainable | None = None
        self.result: dict[str, Any] | None = None

    def params(self) -> dict[str, Any]:
        return {"r": self.r, "alpha": self.alpha, "target_modules": list(self.target_modules),
                "layer_range": list(self.layer_range), **self.cfg.model_dump()}

    def _handle(self, model: PreTrainedModel) -> PeftTrainable:
        return PeftTrainable(model, self.variant, self.r, self.alpha, self.target_modules, self.layer_range, self.cfg.seed)

    def fit(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase, pairs: ContrastPairs,
            val: ContrastPairs | None = None, ckpt_dir: Path | None = None, resume: bool = False,
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
