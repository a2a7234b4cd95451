"""`bipo`: Bi-directional Preference Optimisation of a steering vector (Cao et al. 2024, arXiv 2406.00045).

A vector v_l is added to the residual stream at the output of decoder layer l (default: the one middle
layer, as BiPO; several layers get one vector each), h_l ← h_l + c·v_l, with `_addition`'s hooks. It is
trained on output probabilities, not hidden states: each step draws d ∈ {+1, −1} and minimises

    −log σ(d·β·[log π_{d·v}(y_w|x)/π₀(y_w|x) − log π_{d·v}(y_l|x)/π₀(y_l|x)])

so +v makes the positive persona's continuation y_w more likely than the negative's y_l and −v the reverse
(the preference data are described in `_preference`). v starts at zero, as in BiPO; c = 0 adds nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ContextManager

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..concepts import ContrastPairs
from ..io import atomic_write_json
from ..loop import Loop
from ..models import decoder_layers
from ..objectives.dpo import DPOObjective
from ._addition import AdditionSteerer, add_to_outputs, fitted_layers
from ._preference import fit_record, loop_config, preference_config, preference_data


class BiPOSteerer(AdditionSteerer):
    """Residual-stream addition of a vector trained with BiPO's bidirectional DPO loss."""

    name = "bipo"

    def __init__(
        self, layers: Sequence[int] | None = None, layer_range: Sequence[float] = (0.5, 0.5), beta: float = 0.1,
        lr: float = 1e-2, steps: int = 24, batch_size: int = 8, gen_tokens: int = 16, max_length: int = 128,
        gen_batch_size: int = 32, seed: int = 0,
    ) -> None:
        self.cfg = preference_config(self.name, beta=beta, lr=lr, steps=steps, batch_size=batch_size,
                                     gen_tokens=gen_tokens, max_length=max_length, gen_batch_size=gen_batch_size,
                                     seed=seed)
        super().__init__(layers, layer_range, max_length, batch_size)
        self.hparams.update(self.cfg.model_dump())
        self.result: dict[str, Any] | None = None

    def fit(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pairs: ContrastPairs,
            val: ContrastPairs | None = None, ckpt_dir: Path | None = None, resume: bool = False,
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
