"""The one training loop, for every trainable method; what it minimises is an `Objective`.

Each optimizer step: `grad_accum` micro-batch losses from the objective, backward, optional gradient clipping,
AdamW + schedule. Every `eval_every` steps (and at the last) the objective may validate; the best validated
parameters are kept and restored at the end, `patience` validations without improvement stop early. Every
`checkpoint_every` steps the parameters, best parameters, optimizer, scheduler, torch RNG, history and
early-stopping state are written atomically (safetensors + json, no pickle); `run(resume=True)` continues
from them bit-identically, because the objective fixes its data order from the seed alone in `setup`.

Objectives (`innerpissa.objectives`): ReprPO (`reprpo.ReprPOObjective`, InnerPiSSA and the LoRA family, run by
`train.Trainer`) and DPO / BiPO (`dpo.DPOObjective`). A new objective composes loss terms; it does not fork this loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .config import TrainConfig
from .io import atomic_save_tensors, atomic_write_json, load_tensors, read_json


CHECKPOINT_META = "checkpoint.json"  # written last: a checkpoint is complete once this file exists


class TrainingDiverged(RuntimeError):
    """A loss term became NaN/inf; the adapter was rolled back to the last good checkpoint."""


@dataclass
class TrainResult:
    """What training produced: per-step log, best validation step, whether the sign was flipped."""

    history: list[dict] = field(default_factory=list)
    best_step: int = 0
    best_val: float = math.inf
    sign_flipped: bool = False
    val_shift: float = 0.0  # mean projection(+1) − projection(−1) on validation pairs, after orientation
    precision: str = "fp32"  # the resolved compute precision (innerpissa.precision)


class Objective(Protocol):
    """What the loop trains: its parameters, a loss per (step, micro-batch), and optional validation."""

    total_steps: int
    validates: bool  # False: no validation, the last step's parameters are the result
    early_stop_from: int  # first step whose validation can count as a best or a miss
    shown: tuple[str, ...]  # logged terms shown on the progress bar

    def setup(self) -> None:
        """Seeded preparation before step 0 (data order, reference, attach the adapter); run again on resume."""

    def parameters(self) -> list[nn.Parameter]:
        """The trained tensors, in a fixed order (the checkpoint stores them by position)."""

    def loss(self, step: int, micro: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of micro-batch `micro` of optimizer step `step`, and its logged terms (floats)."""

    def evaluate(self) -> dict[str, float]:
        """Validation values for the log; `val_loss` is the early-stopping criterion."""

    def finish(self, result: TrainResult) -> None:
        """After training (best parameters restored): e.g. orient the sign."""


class Loop:
    """AdamW + schedule over an objective's parameters, with validation, early stopping and checkpoint/resume."""

    def __init__(self, objective: Objective, cfg: TrainConfig, ckpt_dir: Path | None = None, progress: bool = True,
                 desc: str = "train") -> None:
        self.objective, self.cfg, self.ckpt_dir, self.progress, self.desc = objective, cfg, ckpt_dir, progress, desc
        self.opt: torch.optim.Optimizer | None = None

    # ---- setup -------------------------------------------------------------------------------
    def start(self) -> None:
        """Set the objective up, build the optimizer and schedule, take the initial parameters as the best."""
        self.objective.setup()
        tc, total = self.cfg, self.objective.total_steps
        self.opt = torch.optim.AdamW(self.objective.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        if tc.schedule == "onecycle":
            self.sched = torch.optim.lr_scheduler.OneCycleLR(
                self.opt, max_lr=tc.lr, total_steps=total, cycle_momentum=False,
                pct_start=0.1 if total != 10 else 0.15,  # torch divides by zero when pct_start·steps == 1
            )
        elif tc.schedule == "cosine":
            self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=total)
        else:
            self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: 1.0)
        self.best_params = [p.detach().clone() for p in self.objective.parameters()]
        self.bad_evals = 0

    # ---- checkpoints -------------------------------------------------------------------------
    def _state(self, step: int, result: TrainResult) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, json metadata) of the whole training state after `step` steps."""
        tensors = {f"param.{i}": p for i, p in enumerate(self.objective.parameters())}
        tensors.update({f"best.{i}": t for i, t in enumerate(self.best_params)})
        tensors["rng.torch"] = torch.get_rng_state()  # data order is fixed up front; this covers any other draw
        opt = self.opt.state_dict()
        for i, st in opt["state"].items():
            for k, v in st.items():
                tensors[f"opt.{i}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
        meta = {
            "step": step,
            "param_groups": opt["param_groups"],
            "scheduler": self.sched.state_dict(),
            "history": result.history,
            "best_step": result.best_step,
            "best_val": result.best_val,
            "bad_evals": self.bad_evals,
        }
        return tensors, meta

    def has_checkpoint(self) -> bool:
        """Whether `ckpt_dir` holds a complete checkpoint (`CHECKPOINT_META` is written last)."""
        return self.ckpt_dir is not None and (self.ckpt_dir / CHECKPOINT_META).exists()

    def save_checkpoint(self, step: int, result: TrainResult) -> None:
        """Parameters, best parameters, optimizer, scheduler, step and log; atomic (tensors then meta)."""
        if self.ckpt_dir is None:
            return
        tensors, meta = self._state(step, result)
        atomic_save_tensors(tensors, self.ckpt_dir / "checkpoint.safetensors")
        atomic_write_json(self.ckpt_dir / CHECKPOINT_META, meta)

    def load_checkpoint(self, result: TrainResult) -> int:
        """Restore the state written by save_checkpoint; returns the step to continue from."""
        meta = read_json(self.ckpt_dir / CHECKPOINT_META)
        tensors = load_tensors(self.ckpt_dir / "checkpoint.safetensors")
        params = self.objective.parameters()
        with torch.no_grad():
            for i, p in enumerate(params):
                p.copy_(tensors[f"param.{i}"])
        self.best_params = [tensors[f"best.{i}"].to(p.device) for i, p in enumerate(params)]
        torch.set_rng_state(tensors["rng.torch"])
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, v in tensors.items():
            if key.startswith("opt."):
                _, i, k = key.split(".", 2)
                state.setdefault(int(i), {})[k] = v.to(params[int(i)].device) if k != "step" else v
        self.opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        self.sched.load_state_dict(meta["scheduler"])
        result.history = meta["history"]
        result.best_step, result.best_val = meta["best_step"], meta["best_val"]
        self.bad_evals = meta["bad_evals"]
        return int(meta["step"])

    # ---- the loop ----------------------------------------------------------------------------
    def optimizer_step(self, step: int) -> list[dict[str, float]]:
        """One optimizer step over `grad_accum` micro-batches; returns each micro-batch's logged terms."""
        self.opt.zero_grad(set_to_none=True)
        logs = []
        for k in range(self.cfg.grad_accum):
            total, logged = self.objective.loss(step, k)
            (total / self.cfg.grad_accum).backward()
            logs.append(logged)
        if self.cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.objective.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.sched.step()
        return logs

    def _validate(self, step: int, row: dict, result: TrainResult) -> None:
        """Validate into `row`; keep the parameters if they are the best so far, else count a miss."""
        row.update(self.objective.evaluate())
        if step < self.objective.early_stop_from:  # e.g. during a warm-up: neither a best nor a miss
            return
        if row["val_loss"] < result.best_val - self.cfg.min_delta:
            result.best_val, result.best_step = row["val_loss"], step
            self.best_params = [p.detach().clone() for p in self.objective.parameters()]
            self.bad_evals = 0
        else:
            self.bad_evals += 1

    def run(self, result: TrainResult | None = None, resume: bool = False,
            stop_after: int | None = None) -> TrainResult:
        """Train for the objective's `total_steps` or until early stopping; `resume` continues from the checkpoint.

        `stop_after` simulates a crash: training stops before that step, the result is left as it is.
        """
        tc, obj = self.cfg, self.objective
        result = result if result is not None else TrainResult()
        self.start()
        start = self.load_checkpoint(result) if resume and self.has_checkpoint() else 0
        total = obj.total_steps
        bar = tqdm(range(start, total), desc=self.desc, disable=not self.progress, initial=start, total=total)
        for step in bar:
            if stop_after is not None and step >= stop_after:
                break
            try:
                logs = self.optimizer_step(step)
            except TrainingDiverged as e:
                if self.has_checkpoint():
                    self.load_checkpoint(result)
                raise TrainingDiverged(f"{e} at step {step}; adapter rolled back to the last good checkpoint") from None
            row = {k: float(np.mean([l[k] for l in logs])) for k in logs[0]}
            row.update(step=step + 1, lr=self.sched.get_last_lr()[0])
            if obj.validates and ((step + 1) % tc.eval_every == 0 or step + 1 == total):
                self._validate(step + 1, row, result)
            result.history.append(row)
            bar.set_postfix({k: f"{row[k]:.3f}" for k in obj.shown if k in row})
            if (step + 1) % tc.checkpoint_every == 0:
                self.save_checkpoint(step + 1, result)
            if tc.patience is not None and self.bad_evals >= tc.patience:
                break
        if stop_after is not None and stop_after < total:
            return result
        if obj.validates:
            with torch.no_grad():
                for p, best in zip(obj.parameters(), self.best_params):
                    p.copy_(best)
        obj.finish(result)
        return result
