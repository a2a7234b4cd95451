"""Activation addition: add c·v to the output of chosen modules at every position (c = 0: no hooks at all).

Shared machinery of the arithmetic baselines: `pca`, `mean_diff` and `random` add one vector per decoder
layer to the residual stream (`AdditionSteerer`); `sspace` adds one vector per linear module output.
Hooks are *prepended* so transformers' own output capture (`output_hidden_states`) sees the steered
stream whatever order hooks were installed in.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ContextManager

import torch
from pydantic import Field, field_validator
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .. import batching
from ..batching import Batch, encode_pairs, last_token_hidden, sorted_chunks, unsort
from ..concepts import ContrastPairs
from ..models import base_cache_dir, decoder_layers, select_layers, tensors_sha256
from .base import SteererParams, TensorSteerer, forward_hooks

DEFAULT_LAYER_RANGE = (0.35, 0.7)  # CAA/repeng middle-to-late band: layers 10-20 of SmolLM2's 30


def check_coeff(c: float) -> float:
    """Reject NaN/inf coefficients with a clear message."""
    if not math.isfinite(c):
        raise ValueError(f"steering coefficient must be a finite number, got {c}")
    return float(c)


class LayerParams(SteererParams):
    """Hyper-parameters shared by the activation-addition steerers: which decoder layers, and the batching of the
    pairs' forwards."""

    layers: list[int] | None = Field(None, description="decoder-layer indices; overrides layer_range")
    layer_range: tuple[float, float] = Field(DEFAULT_LAYER_RANGE, description="depth fractions [lo, hi] of layers")
    max_length: int = Field(128, ge=1, description="token cap of a pair's prompt")
    batch_size: int = Field(32, ge=1, description="rows per forward")

    @field_validator("layer_range")
    @classmethod
    def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 <= v[0] <= v[1] <= 1.0:
            raise ValueError(f"must satisfy 0 <= lo <= hi <= 1, got {list(v)}")
        return v


def fitted_layers(model: PreTrainedModel, hparams: dict[str, Any]) -> list[int]:
    """The decoder-layer indices a steerer with these hyper-parameters targets on `model`."""
    return select_layers(len(decoder_layers(model)), hparams["layers"], tuple(hparams["layer_range"]))


def _adder(delta: torch.Tensor):
    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (output[0] + delta.to(output[0].dtype), *output[1:])
        return output + delta.to(output.dtype)

    return hook


def add_to_outputs(targets: Sequence[tuple[nn.Module, torch.Tensor]], c: float) -> ContextManager[None]:
    """Context manager adding c·v to each (module, v) output at all positions; removes its hooks on exit."""
    c = check_coeff(c)
    if c == 0.0:
        return contextlib.nullcontext()

    def factory() -> list[Any]:
        handles = []
        for module, v in targets:
            device = next(module.parameters()).device
            delta = (c * v.float()).to(device)
            handles.append(module.register_forward_hook(_adder(delta), prepend=True))
        return handles

    return forward_hooks(factory)


def _hidden_key(model: PreTrainedModel, batch: Batch, layers: Sequence[int], batch_size: int) -> str:
    """Everything `pair_hidden`'s forwards depend on: the model's whole state, the exact token batch, the layers,
    the chunking, the device and autocast state, and the code that runs them."""
    h = hashlib.sha256(tensors_sha256(sorted(model.state_dict().items())).encode())
    h.update(tensors_sha256(zip(("ids", "mask", "pos"), (batch.input_ids, batch.attention_mask, batch.position_ids))).encode())
    for mod in (__file__, batching.__file__):
        h.update(Path(mod).read_bytes())
    dev = next(model.parameters()).device
    amp = torch.is_autocast_enabled(dev.type) and str(torch.get_autocast_dtype(dev.type))
    h.update(json.dumps([sorted(int(l) for l in layers), batch_size, str(dev), amp]).encode())
    return h.hexdigest()


def pair_hidden(
    model: PreTrainedModel, tok: PreTrainedTokenizerBase, pairs: ContrastPairs, layers: Sequence[int],
    max_length: int, batch_size: int, desc: str = "activations", progress: bool = True,
) -> dict[int, torch.Tensor]:
    """Last-token residual-stream differences h_chosen − h_rejected per layer: {layer: [n_pairs, d]}.

    Stored under `base_cache_dir()/activations` (keyed by `_hidden_key`): the null's random seeds, `mean_diff`
    and `pca` fit on the same forwards, which on a 1.5B model on CPU cost minutes each time."""
    batch = encode_pairs(tok, pairs, max_length).to(next(model.parameters()).device)
    folder = base_cache_dir()
    path = folder / "activations" / f"{_hidden_key(model, batch, layers, batch_size)}.safetensors" if folder else None
    if path is not None and path.is_file():
        return {int(k): v for k, v in load_file(path).items()}
    order, chunks = sorted_chunks(batch, batch_size)
    outs = [last_token_hidden(model, b, layers, 1, batch_size)
            for b in tqdm(chunks, desc=desc, leave=False, disable=not progress)]
    n = len(pairs)
    diffs = {}
    for l in layers:
        h = unsort(order.cpu(), torch.cat([o[l][:, -1].cpu() for o in outs]))
        diffs[l] = h[:n] - h[n:]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp")
        try:
            save_file({str(l): d.contiguous() for l, d in diffs.items()}, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return diffs


class AdditionSteerer(TensorSteerer):
    """Residual-stream steering: h_l ← h_l + c·v_l at the output of each chosen decoder layer l, all positions.

    Subclasses define `vector(diff, layer)`: the steering vector from the [n_pairs, d] last-token differences.
    """

    name = "addition"
    Params = LayerParams
    seed_param = None  # the vector is a function of the pairs: every seed is the same fit (`random` has one)
    exact_at_zero = True  # c = 0 is the base model bit for bit (tested): scoring may reuse base forwards

    def __init__(self, **params: Any) -> None:
        super().__init__(**self.parse(params).model_dump(mode="json"))

    def vector(self, diff: torch.Tensor, layer: int) -> torch.Tensor:
        """The steering vector [d] for `layer` from last-token differences [n_pairs, d]."""
        raise NotImplementedError

    def fit(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pairs: ContrastPairs,
            val: ContrastPairs | None = None, *, ckpt_dir: Path | None = None, resume: bool = False,
            progress: bool = True) -> None:
        hp = self.hparams
        layers = fitted_layers(model, hp)
        diffs = pair_hidden(model, tokenizer, pairs, layers, hp["max_length"], hp["batch_size"], f"{self.name}: activations",
                            progress)
        self.tensors = {f"layer.{l}": self.vector(diffs[l].double(), l).float().contiguous() for l in layers}

    def vectors(self) -> dict[int, torch.Tensor]:
        """The fitted steering vectors by decoder-layer index."""
        if not self.tensors:
            raise ValueError(f"{self.name} steerer is not fitted: call fit() or load it from a saved directory")
        return {int(k.split(".")[1]): v for k, v in self.tensors.items()}

    def steer(self, model: PreTrainedModel, c: float) -> ContextManager[None]:
        blocks = decoder_layers(model)
        d = model.get_input_embeddings().embedding_dim
        targets = []
        for l, v in sorted(self.vectors().items()):
            if l >= len(blocks) or v.numel() != d:
                raise ValueError(
                    f"{self.name} vectors (layer {l}, d={v.numel()}) do not fit this model "
                    f"({len(blocks)} layers, d={d}): refit the steerer on this model"
                )
            targets.append((blocks[l], v))
        return add_to_outputs(targets, c)
