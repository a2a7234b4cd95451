"""The DPO objective (Rafailov et al. 2023) and BiPO's bidirectional variant (Cao et al. 2024), for `loop.Loop`.

The data are preference pairs: completions y_w, y_l of one context x, scored once under the frozen reference
(`PreferenceData.ref_logp`). Each step scores a batch under the steered policy (`seq_logps`) and takes `loss.dpo`.
How the pairs are made from persona pairs (generation, neutral context) is `steerers._preference`'s part.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ContextManager, Protocol

import torch
from torch import nn
from transformers import PreTrainedModel

from ..loop import TrainResult
from ..loss import dpo


class DPOSettings(Protocol):
    """What the objective reads of its settings (`steerers._preference.PreferenceConfig`)."""

    beta: float
    steps: int
    batch_size: int
    seed: int


@dataclass
class PreferenceData:
    """Rows [0, n): x + y_w, rows [n, 2n): x + y_l, left-padded [2n, T]; `target` marks the y tokens."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    target: torch.Tensor
    ref_logp: torch.Tensor  # [2n] summed log-probs of y under the base model
    gen_tokens: int

    def __len__(self) -> int:
        return self.input_ids.shape[0] // 2

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Row indices of pairs `idx`: their y_w rows, then their y_l rows."""
        return torch.cat([idx, idx + len(self)])


def seq_logps(model: PreTrainedModel, data: PreferenceData, rows: torch.Tensor) -> torch.Tensor:
    """Summed log-probs of the y tokens of `rows` under the model as it is now (steering hooks included): [len(rows)]."""
    device = next(model.parameters()).device
    ids, mask, tgt = (t[rows].to(device) for t in (data.input_ids, data.attention_mask, data.target))
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    k = data.gen_tokens  # y sits in the last k columns (left padding): logits of the k+1 last positions suffice
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=k + 1).logits[:, :-1].float()
    logp = torch.log_softmax(logits, -1).gather(-1, ids[:, -k:, None]).squeeze(-1)
    return (logp * tgt[:, -k:]).sum(-1)


class DPOObjective:
    """The DPO loss over `params` for `cfg.steps` random batches, for `loop.Loop` (no validation: the last step wins).

    bidirectional=False: standard DPO with the policy at c = +1. bidirectional=True (BiPO): each step draws
    d ∈ {+1, −1}, runs the policy at c = d and flips the preference with it (`loss.dpo(..., sign=d)`).
    """

    validates, early_stop_from, shown = False, 0, ("loss", "sign")

    def __init__(self, model: PreTrainedModel, data: PreferenceData, params: list[nn.Parameter],
                 steer: Callable[[float], ContextManager[None]], cfg: DPOSettings, bidirectional: bool) -> None:
        self.model, self.data, self.params, self.steer = model, data, params, steer
        self.cfg, self.bidirectional, self.total_steps = cfg, bidirectional, cfg.steps

    def setup(self) -> None:
        """Draw every step's batch and sign up front from the seed (so a resumed run draws the same)."""
        gen = torch.Generator().manual_seed(self.cfg.seed)
        self.draws: list[tuple[torch.Tensor, float]] = []
        for _ in range(self.total_steps):
            idx = torch.randperm(len(self.data), generator=gen)[: self.cfg.batch_size]
            d = -1.0 if self.bidirectional and torch.rand((), generator=gen) < 0.5 else 1.0
            self.draws.append((idx, d))

    def parameters(self) -> list[nn.Parameter]:
        """The trained tensors (steering vectors or LoRA factors)."""
        return self.params

    def loss(self, step: int, micro: int) -> tuple[torch.Tensor, dict[str, float]]:
        """DPO loss of step `step`'s batch with the policy at c = d (one micro-batch per step)."""
        idx, d = self.draws[step]
        rows = self.data.rows(idx)
        with self.steer(d):
            logp = seq_logps(self.model, self.data, rows)
        ref = self.data.ref_logp[rows].to(logp.device)
        b = len(idx)
        loss = dpo(logp[:b], logp[b:], ref[:b], ref[b:], self.cfg.beta, sign=d)
        return loss, {"sign": d, "loss": float(loss.detach())}

    def evaluate(self) -> dict[str, float]:
        """Never called (validates is False): a fit is validated by `steerers._preference.fit_record`'s reward margins."""
        return {}

    def finish(self, result: TrainResult) -> None:
        """Nothing to do after training: +c is the preferred direction by construction."""
