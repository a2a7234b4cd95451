"""The InnerPiSSA adapter as the ReprPO objective trains it (an `objectives.reprpo.TrainableAdapter`)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from ..config import AdapterConfig
from .model import attach, collect_module_inputs, remove, steer, target_names, trainable_parameters


class InnerPiSSATrainable:
    """InnerPiSSA layers on `model`; flipping negates every parameter, which is exactly c -> −c."""

    base_weights_in_forward_only = True  # the base layer is called, never read (U, S, V are buffers of their own)

    def __init__(self, model: PreTrainedModel, cfg: AdapterConfig) -> None:
        self.model, self.cfg = model, cfg

    def attach(self, objective: Any) -> None:
        """Put a fresh adapter with this config on the model; an existing one is removed first (a new fit
        never continues an old adapter: resuming goes through the checkpoint). With dims="data" the adapted
        directions come from the objective's first 64 training pairs, at the last tokens its loss reads."""
        remove(self.model)
        contrast = None
        if self.cfg.dims == "data":
            idx = list(range(min(64, len(objective.train_pairs))))
            b = objective.encode(objective.train_pairs, idx)
            names = target_names(self.model, self.cfg)
            contrast = collect_module_inputs(self.model, names, b.model_inputs(), len(b) // 2, objective.lcfg.last_n_tokens)
        attach(self.model, self.cfg, contrast=contrast)

    def parameters(self) -> list[nn.Parameter]:
        return trainable_parameters(self.model)

    def steer(self, c: float) -> contextlib.AbstractContextManager:
        return steer(self.model, c)

    @torch.no_grad()
    def flip(self) -> None:
        for p in self.parameters():
            p.neg_()
