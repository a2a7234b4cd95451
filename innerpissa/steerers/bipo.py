"""`bipo`: Bi-directional Preference Optimisation of a steering vector (Cao et al. 2024, arXiv 2406.00045).

A vector v_l is added to the residual stream at the output of decoder layer l (default: the one middle
layer, as BiPO; several layers get one vector each), h_l ← h_l + c·v_l, with `_addition`'s hooks. It is
trained on output probabilities, not hidden states: each step draws d ∈ {+1, −1} and minimises

    −log σ(d·β·[log π_{d·v}(y_w|x)/π₀(y_w|x) − log π_{d·v}(y_l|x)/π₀(y_l|x)])

so +v makes the positive persona's continuation y_w more likely than the negative's y_l and −v the reverse
(the preference data are described in `_preference`). v starts at zero, as in BiPO; c = 0 adds nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ContextManager

import torch
from pydantic import Field
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..concepts import ContrastPairs
from ..io import atomic_write_json
from ..loop import Loop
from ..models import decoder_layers
from ..objectives.dpo import DPOObjective
from ._addition import AdditionSteerer, LayerParams, add_to_outputs, fitted_layers
from ._preference import PreferenceConfig, fit_record, loop_config, preference_data


class BiPOParams(PreferenceConfig, LayerParams):
    """The layers of `_addition` (default: the one middle layer, as BiPO) and the DPO settings of `_preference`."""

    layer_range: tuple[float, float] = Field((0.5, 0.5), description="depth fractions [lo, hi] of layers")
    lr: float = Field(1e-2, gt=0)


class BiPOSteerer(AdditionSteerer):
    """Residual-stream addition of a vector trained with BiPO's bidirectional DPO loss."""

    name = "bipo"
    Params = BiPOParams
    seed_param = "seed"  # the batches and signs drawn each step
    trainable = True
    overrides = {"steps": "steps"}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.cfg = PreferenceConfig(**{k: self.hparams[k] for k in PreferenceConfig.model_fields})
        self.result: dict[str, Any] | None = None

    def fit(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pairs: ContrastPairs,
            val: ContrastPairs | None = None, *, ckpt_dir: Path | None = None, resume: bool = False,
            progress: bool = True) -> None:
        """Train the vectors with the shared loop (checkpoints in `ckpt_dir`, `resume` continues them)."""
        blocks = decoder_layers(model)
        device = next(model.parameters()).device
        d = model.get_input_embeddings().embedding_dim
        vs = {l: nn.Parameter(torch.zeros(d, device=device)) for l in fitted_layers(model, self.hparams)}

        def steer(c: float) -> ContextManager[None]:
            return add_to_outputs([(blocks[l], v) for l, v in vs.items()], c)

        data = preference_data(model, tokenizer, pairs, self.cfg, progress)
        objective = DPOObjective(model, data, list(vs.values()), steer, self.cfg, bidirectional=True)
        history = Loop(objective, loop_config(self.cfg), ckpt_dir, progress, desc="bipo").run(resume=resume).history
        self.tensors = {f"layer.{l}": v.detach().float().cpu().contiguous() for l, v in vs.items()}
        self.result = fit_record(model, tokenizer, pairs, val, data, history, steer, self.cfg, progress)

    def save(self, path: Path) -> None:
        super().save(path)
        if self.result is not None:
            atomic_write_json(Path(path) / "train.json", self.result)


STEERER = BiPOSteerer
