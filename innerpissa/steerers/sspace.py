"""`sspace`: mean-difference steering in the singular basis of each targeted linear module (the seed's S-space).

For a targeted module y = W x + b with W = U diag(S) Vᵀ, keep the top r singular triplets. PiSSA factors
W_r = A·B with A = U_r √S_r and B = √S_r V_rᵀ; the r-dim S-space coordinates of an output are
z(y) = S_r^(-1/2) U_rᵀ y (= B x + const). The vector is the mean chosen − rejected difference of those
coordinates at the last token, mapped back to the output space through A:

    Δy = U_r √S_r · mean_i[z(y_i⁺) − z(y_i⁻)] = U_r U_rᵀ · mean_i(y_i⁺ − y_i⁻) = U_r S_r V_rᵀ · mean_i(x_i⁺ − x_i⁻)

and steering adds c·Δy to the module's output at every position. It is CAA on each module's own write
into the residual stream, restricted to the r directions that module writes most strongly (r ≥ rank W:
the plain mean output difference). Unit: c = 1 adds one average pair difference of each module's output
(per module, so it is not the same vector norm as `mean_diff`'s per-layer residual difference).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ContextManager

import torch
from pydantic import Field
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..batching import Batch, encode_pairs, sorted_chunks, unsort
from ..capture import capture
from ..concepts import ContrastPairs
from ..models import decoder_layers
from ._addition import LayerParams, add_to_outputs, fitted_layers
from .base import TensorSteerer


def find_modules(model: PreTrainedModel, layers: Sequence[int], names: Sequence[str]) -> dict[str, nn.Linear]:
    """{"layers.{l}.{path}": linear} for each decoder layer l and each module name (e.g. o_proj) in it."""
    out = {}
    for l in layers:
        block = decoder_layers(model)[l]
        linears = {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear)}
        for name in names:
            hits = [n for n in linears if n.split(".")[-1] == name]
            if len(hits) != 1:
                raise ValueError(
                    f"target module {name!r} matches {len(hits)} linear layers in decoder layer {l}; "
                    f"choose from {sorted({n.split('.')[-1] for n in linears})}"
                )
            out[f"layers.{l}.{hits[0]}"] = linears[hits[0]]
    return out


@torch.no_grad()
def last_token_outputs(model: PreTrainedModel, batches: Iterable[Batch], modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """Output of each module at the last (left-padded) position for every row: {key: [B, out]}."""
    outs: dict[str, list[torch.Tensor]] = {k: [] for k in modules}
    with capture(modules, 1) as store:
        for b in batches:
            model(**b.model_inputs(), logits_to_keep=1)
            for k in modules:
                outs[k].append(store[k][:, -1].float().cpu())
    return {k: torch.cat(v) for k, v in outs.items()}


class SSpaceParams(LayerParams):
    target_modules: list[str] = Field(["o_proj", "down_proj"], min_length=1, description="linear modules per layer")
    r: int = Field(64, ge=1, description="top singular directions kept per module")


class SSpaceSteerer(TensorSteerer):
    """Adds c·U_r U_rᵀ·mean(y⁺ − y⁻) to each targeted linear module's output (see module docstring)."""

    name = "sspace"
    Params = SSpaceParams
    seed_param = None  # the vectors are a function of the pairs and weights: every seed is the same fit
    exact_at_zero = True  # c = 0 is the base model bit for bit (tested): scoring may reuse base forwards
    rank = 5

    def __init__(self, **params: Any) -> None:
        super().__init__(**self.parse(params).model_dump(mode="json"))

    @torch.no_grad()
    def fit(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pairs: ContrastPairs,
            val: ContrastPairs | None = None, *, ckpt_dir: Path | None = None, resume: bool = False,
            progress: bool = True) -> None:
        hp = self.hparams
        modules = find_modules(model, fitted_layers(model, hp), hp["target_modules"])
        batch = encode_pairs(tokenizer, pairs, hp["max_length"]).to(next(model.parameters()).device)
        order, chunks = sorted_chunks(batch, hp["batch_size"])
        outs = last_token_outputs(model, tqdm(chunks, desc="sspace: activations", leave=False, disable=not progress), modules)
        n = len(pairs)
        self.tensors = {}
        for key, module in modules.items():
            y = unsort(order.cpu(), outs[key])
            dy = (y[:n] - y[n:]).double().mean(0)
            U = torch.linalg.svd(module.weight.detach().double().cpu(), full_matrices=False).U[:, : hp["r"]]
            self.tensors[key] = (U @ (U.T @ dy)).float().contiguous()

    def steer(self, model: PreTrainedModel, c: float) -> ContextManager[None]:
        if not self.tensors:
            raise ValueError("sspace steerer is not fitted: call fit() or load it from a saved directory")
        blocks = decoder_layers(model)
        targets = []
        for key, v in self.tensors.items():
            _, l, path = key.split(".", 2)
            try:
                module = blocks[int(l)].get_submodule(path)
            except (IndexError, AttributeError):
                module = None
            if not isinstance(module, nn.Linear) or module.out_features != v.numel():
                raise ValueError(f"sspace vector {key} (size {v.numel()}) does not fit this model: refit the steerer on it")
            targets.append((module, v))
        return add_to_outputs(targets, c)


STEERER = SSpaceSteerer
