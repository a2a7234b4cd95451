"""Module surgery shared by every weight-adapting method: find the linear modules to adapt, swap modules in place,
and fingerprint the base weights an adapter was trained on so it is never loaded onto another model."""

from __future__ import annotations

from torch import nn
from transformers import PreTrainedModel

from .models import decoder_layers, model_id, tensors_sha256


class AdapterMismatchError(ValueError):
    """The saved adapter was made for a different base model."""


def linear_names(model: nn.Module, layer_idx: list[int], targets: tuple[str, ...] | list[str]) -> list[str]:
    """Full names of the linear modules called `targets` (last name part) in decoder layers `layer_idx`.

    The one module finder of every weight-adapting method (InnerPiSSA, LoRA/DoRA/PiSSA); a module already
    replaced by an adapter layer (it has a `base_layer`) still counts. Unknown names raise with the valid ones.
    """
    layers = decoder_layers(model)
    prefix = layers_prefix(model)

    def linear(m: nn.Module) -> bool:
        return isinstance(m, nn.Linear) or isinstance(getattr(m, "base_layer", None), nn.Linear)

    valid = sorted({n.split(".")[-1] for n, m in layers[0].named_modules() if linear(m) and n.split(".")[-1] != "base_layer"})
    unknown = [t for t in targets if t not in valid]
    if unknown:
        raise ValueError(f"unknown target module(s) {unknown}; valid linear modules: {', '.join(valid)}")
    return [f"{prefix}.{i}.{n}" for i in layer_idx for n, m in layers[i].named_modules()
            if linear(m) and n.split(".")[-1] in targets]


def layers_prefix(model: nn.Module) -> str:
    """The dotted name of the decoder-layer list (e.g. `model.layers`), the prefix of every adapted module's name."""
    layers = decoder_layers(model)
    return next(n for n, m in model.named_modules() if m is layers)


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put `module` at the dotted path `name` (the one module-replacement step of every adapter)."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def fingerprint(model: PreTrainedModel, names: list[str]) -> dict:
    """Identify the base model: its name, layer count, target shapes and a sha256 of the target weights."""
    weights = []
    for n in names:
        m = model.get_submodule(n)
        weights.append((n, getattr(m, "base_layer", m).weight))  # an adapted module: its frozen base weight
    return {
        "model": model_id(model),
        "n_layers": len(decoder_layers(model)),
        "hidden_size": getattr(model.config, "hidden_size", None),
        "shapes": {n: list(w.shape) for n, w in weights},
        "weights_sha256": tensors_sha256(weights, header=False),
    }


def check_fingerprint(model: PreTrainedModel, names: list[str], saved: dict, what: str) -> None:
    """Raise AdapterMismatchError unless `model`'s modules `names` have the `saved` fingerprint's shapes and
    weights sha256 (`what` names the saved adapter in the message)."""
    try:
        fp = fingerprint(model, names)
    except AttributeError:  # a module name this model does not have
        fp = {"shapes": None}
    if fp.get("shapes") != saved["shapes"] or fp.get("weights_sha256") != saved["weights_sha256"]:
        raise AdapterMismatchError(
            f"{what} was trained on base model {saved['model']!r} (weights sha256 "
            f"{saved['weights_sha256'][:12]}), not this one ({model_id(model)!r}); load the matching base model"
        )
