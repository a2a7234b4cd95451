"""Train an adapter with ReprPO: `Trainer(model, tok, train_pairs, val_pairs, adapter, loss_cfg, train_cfg).run()`.

Two parts, wired together here:

- the objective, `objectives.reprpo.ReprPOObjective`: its `setup` seeds the RNGs, fixes the batch order, caches
  the adapter-off reference of every pair used, takes the preference direction u and attaches a fresh adapter;
  its `loss(step, micro)` is the ReprPO loss of one micro-batch (separation along u + coherence barrier +
  monotonic hinge, at c = +1 and −1); its `evaluate` is the validation loss; its `finish` orients the sign so
  +c moves validation pairs toward the positive persona.
- the loop, `loop.Loop`, shared with the DPO objective: AdamW + schedule, validation every `eval_every` steps,
  early stopping with the best validated adapter restored, atomic checkpoints and bit-identical resume.

The adapter is an `AdapterConfig` (a fresh InnerPiSSA adapter, `adapter.InnerPiSSATrainable`) or any
`objectives.reprpo.TrainableAdapter` (the LoRA family's, in `steerers.peft_lora`). Under bf16 a run keeps bf16
copies of the frozen linear weights for its duration (`precision.bf16_frozen_linears`), made once the reference
is cached and the adapter attached, and put back when it ends.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .concepts import ContrastPairs
from .config import AdapterConfig, LossConfig, TrainConfig
from .loop import Loop, TrainResult
from .objectives.reprpo import ReprPOObjective, TrainableAdapter


class Trainer:
    """ReprPO training: the `objective` (a ReprPOObjective) minimised by the `loop`; `run()` returns a TrainResult."""

    def __init__(
        self,
        model: PreTrainedModel,
        tok: PreTrainedTokenizerBase,
        train_pairs: ContrastPairs,
        val_pairs: ContrastPairs,
        adapter: AdapterConfig | TrainableAdapter,
        loss_cfg: LossConfig,
        train_cfg: TrainConfig,
        ckpt_dir: Path | None = None,
        progress: bool = True,
    ) -> None:
        self.objective = ReprPOObjective(model, tok, train_pairs, val_pairs, adapter, loss_cfg, train_cfg, progress)
        self.loop = Loop(self.objective, train_cfg, ckpt_dir, progress)

    def prepare(self) -> None:
        """Set the objective up and build the optimizer, ready for `optimizer_step` (the frozen weights stay fp32)."""
        self.loop.start()

    def optimizer_step(self, step: int) -> list[dict[str, float]]:
        """One optimizer step of the loop; returns each micro-batch's logged terms."""
        return self.loop.optimizer_step(step)

    def run(self, resume: bool = False, stop_after: int | None = None) -> TrainResult:
        """Train for `total_steps` (fixed `steps`, or `epochs` capped by `max_steps`) or until early stopping;
        `resume` continues from the checkpoint in `ckpt_dir`, `stop_after` simulates a crash before that step."""
        with contextlib.ExitStack() as self.objective.frozen_weights:  # the bf16 weight copies' scope (see setup)
            try:
                return self.loop.run(TrainResult(precision=self.objective.precision), resume, stop_after)
            finally:
                self.objective.frozen_weights = None
