"""Put InnerPiSSA layers into an HF model, steer it, fold it into plain weights, save and reload it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel

from ..capture import capture
from ..config import AdapterConfig
from ..io import atomic_save_tensors, atomic_write_json, load_tensors, read_json
from ..models import decoder_layers, select_layers
from ..surgery import AdapterMismatchError, check_fingerprint, fingerprint, linear_names, replace_module
from .layer import InnerPiSSALinear, contrast_dims

ADAPTER_FILE = "adapter.safetensors"
CONFIG_FILE = "adapter_config.json"


def target_names(model: PreTrainedModel, cfg: AdapterConfig) -> list[str]:
    """Full module names to adapt; unknown module names raise with the list of valid ones."""
    return linear_names(model, select_layers(len(decoder_layers(model)), cfg.layers, cfg.layer_range), cfg.target_modules)


def adapter_layers(model: nn.Module) -> dict[str, InnerPiSSALinear]:
    """All InnerPiSSA layers in the model, by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, InnerPiSSALinear)}


def attach(
    model: PreTrainedModel,
    cfg: AdapterConfig,
    contrast: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    frozen: dict[str, dict[str, torch.Tensor]] | None = None,
) -> dict[str, InnerPiSSALinear]:
    """Replace each target nn.Linear by an InnerPiSSALinear (base frozen, adapter params trainable).

    `contrast` maps module name -> (chosen inputs, rejected inputs) for `cfg.dims == "data"`;
    `frozen` gives saved U/S/V per module (used by `load_adapter`, skips the SVD).
    """
    if adapter_layers(model):
        raise ValueError("model already has InnerPiSSA layers; call remove(model) first")
    names = target_names(model, cfg)
    if cfg.dims == "data" and frozen is None and (contrast is None or not set(names) <= set(contrast)):
        raise ValueError("dims='data' needs contrast activations for every target module (see collect_module_inputs)")
    out = {}
    for name in names:
        base = model.get_submodule(name)
        dims = None
        if cfg.dims == "data" and frozen is None:
            U, S, Vh = torch.linalg.svd(base.weight.detach().float(), full_matrices=False)
            dims = contrast_dims(S, Vh.T, *contrast[name], cfg.r)
        layer = InnerPiSSALinear(base, cfg, dims=dims, frozen=None if frozen is None else frozen[name])
        layer.to(base.weight.device)
        replace_module(model, name, layer)
        out[name] = layer
    model.requires_grad_(False)
    for layer in out.values():
        for p in (layer.P_v, layer.P_u, layer.lam):
            if p is not None:
                p.requires_grad_(True)
    return out


def remove(model: PreTrainedModel) -> None:
    """Restore the original nn.Linear modules (the model is exactly the base model again)."""
    for name, layer in adapter_layers(model).items():
        replace_module(model, name, layer.base_layer)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapter's learnable tensors (rotation generators and singular-value parameters)."""
    return [p for layer in adapter_layers(model).values() for p in (layer.P_v, layer.P_u, layer.lam) if p is not None]


@contextlib.contextmanager
def steer(model: nn.Module, c: float) -> Iterator[None]:
    """Every forward inside runs with coefficient c; the previous coefficients come back on exit."""
    layers = list(adapter_layers(model).values())
    if not layers:
        raise ValueError("model has no InnerPiSSA layers: attach or load an adapter first")
    prev = [layer.coeff for layer in layers]
    for layer in layers:
        layer.coeff = float(c)
    try:
        yield
    finally:
        for layer, p in zip(layers, prev):
            layer.coeff = p


@torch.no_grad()
def merge(model: PreTrainedModel, c: float) -> PreTrainedModel:
    """Fold the adapter at coefficient c into plain nn.Linear weights, in place; returns the model."""
    layers = adapter_layers(model)
    if not layers:
        raise ValueError("model has no InnerPiSSA layers to merge")
    for name, layer in layers.items():
        W = layer.base_layer.weight
        W.copy_((W.float() + layer.delta_weight(c)).to(W.dtype))
        replace_module(model, name, layer.base_layer)
    return model


def save_adapter(model: PreTrainedModel, path: str | Path, extra: dict | None = None) -> None:
    """Write adapter.safetensors (params + U/S/V, bit-exact) and adapter_config.json (config + fingerprint)."""
    layers = adapter_layers(model)
    if not layers:
        raise ValueError("model has no InnerPiSSA layers to save")
    path = Path(path)
    tensors = {}
    for name, layer in layers.items():
        for key in ("U", "S", "V", "P_v", "P_u", "lam"):
            t = getattr(layer, key)
            if t is not None:
                tensors[f"{name}.{key}"] = t
    cfg = next(iter(layers.values())).cfg
    atomic_save_tensors(tensors, path / ADAPTER_FILE)
    atomic_write_json(path / CONFIG_FILE, {
        "adapter": cfg.model_dump(mode="json"),
        "modules": list(layers),
        "fingerprint": fingerprint(model, list(layers)),
        **(extra or {}),
    })


def load_adapter(model: PreTrainedModel, path: str | Path) -> dict[str, InnerPiSSALinear]:
    """Attach a saved adapter to `model`; fails with AdapterMismatchError if made for another base model."""
    path = Path(path)
    if not (path / CONFIG_FILE).is_file() or not (path / ADAPTER_FILE).is_file():
        raise FileNotFoundError(f"{path} has no {CONFIG_FILE}/{ADAPTER_FILE}; pass a directory written by `innerpissa train`")
    meta = read_json(path / CONFIG_FILE)
    cfg = AdapterConfig(**meta["adapter"])
    names = meta["modules"]
    check_fingerprint(model, names, meta["fingerprint"], f"adapter in {path}")
    tensors = load_tensors(path / ADAPTER_FILE)
    frozen = {n: {k: tensors[f"{n}.{k}"] for k in ("U", "S", "V")} for n in names}
    layers = attach(model, cfg, frozen=frozen)
    if sorted(layers) != sorted(names):
        remove(model)
        raise AdapterMismatchError(f"adapter in {path} targets modules this model does not have")
    with torch.no_grad():
        for n, layer in layers.items():
            for key in ("P_v", "P_u", "lam"):
                p = getattr(layer, key)
                if p is not None:
                    p.copy_(tensors[f"{n}.{key}"])
    return layers


def collect_module_inputs(
    model: PreTrainedModel, names: list[str], batch_inputs: dict[str, torch.Tensor], n_pos: int, last_n: int
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Inputs to each named module at the last `last_n` tokens; rows [:n_pos] chosen, [n_pos:] rejected."""
    with torch.no_grad(), capture({n: model.get_submodule(n) for n in names}, last_n, of="input") as store:
        model(**batch_inputs, logits_to_keep=1)
    return {n: (x[:n_pos].float(), x[n_pos:].float()) for n, x in store.items()}
