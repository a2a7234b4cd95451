"""InnerPiSSA's ablation plan as named presets (`InnerPiSSASteerer.presets`): each one a documented delta from an
InnerPiSSA run's recipe.

The presets were written for the `reprpo-v0` objective (ABLATION_RECIPE: multiplicative S, coherence weight 3,
adapters up to the loss layer), and sweeps/ablations.yaml runs them on it. On another recipe a preset applies to
that recipe's config: `scale_add` is a no-op on antipasto (already additive), and the depth presets put adapters at
the loss layer, which antipasto's `adapters_before_loss` refuses with a one-line error.

A delta maps dotted paths into the run's params ("adapter.rotate_v", "loss.coh_weight", "train.n_train") to
values; the key "method" swaps the method (only `no_svd`, which trains LoRA with the same ReprPO loss: `to_lora`).
Seeds are not a preset: list them under `seeds:` in a sweep spec.

Depth presets `depth_<f>` adapt the decoder layers in the depth window [f - 0.2, f] (clipped at 0) and put the
loss layer at depth f, so every adapted layer lies at or below the layer whose hidden states are separated, as
in the default run (`AdapterConfig.layer_range` ending at `LossConfig.loss_layer_frac`). `last3` adapts the last
3 layers, loss at the last. A test checks that every preset really changes the resolved default config.
`Preset.group` and `Preset.value` (e.g. group "depth", value 0.3) let reports plot a family against its value.
"""

from __future__ import annotations

from typing import Any

from ..recipes import DEFAULT_RECIPE, get_recipe
from .base import Preset

DEPTH_WINDOW = 0.2
ABLATION_RECIPE = "reprpo-v0"  # the recipe the presets are written against (their docs quote its defaults)


def _build() -> dict[str, Preset]:
    ps = [
        Preset("full", "the default InnerPiSSA configuration (rotate V, multiplicative S scaling, all loss terms)"),
        Preset("no_rotate_v", "no rotation of the input singular vectors V", {"adapter.rotate_v": False}),
        Preset("rotate_u", "also rotate the output singular vectors U", {"adapter.rotate_u": True}),
        Preset("no_scale", "no singular-value scaling (rotation only)", {"adapter.scale": "none"}),
        Preset("scale_add", "additive singular-value scaling instead of multiplicative", {"adapter.scale": "add"}),
        Preset("scale_tanh", "tanh-bounded singular-value scaling instead of multiplicative", {"adapter.scale": "tanh"}),
        Preset("no_svd", "no SVD basis: LoRA (its default rank) on the same modules and layer range, trained with "
               "the same ReprPO loss and training settings", {"method": "lora"}),
        Preset("no_coherence", "drop the coherence (NLL margin) term", {"loss.coherence": False}),
        Preset("no_monotonic", "drop the monotonic ordering term across c = -1, 0, +1", {"loss.monotonic": False}),
        Preset("adaptive", "adaptive coherence: loosen it for the direction that lags", {"loss.adaptive": True}),
        Preset("modules_o_proj", "adapt attention o_proj only", {"adapter.target_modules": ["o_proj"]}, "modules"),
        Preset("modules_down_proj", "adapt MLP down_proj only", {"adapter.target_modules": ["down_proj"]}, "modules"),
        Preset("last3", "adapt the last 3 decoder layers, loss at the last layer",
               {"adapter.layers": [-3, -2, -1], "loss.loss_layer_frac": 1.0}, "depth", 1.0),
    ]
    for w in (0.3, 1.0, 10.0, 30.0):
        ps.append(Preset(f"coh_weight_{w:g}", f"coherence weight {w:g} (separation weight 1; default 3)",
                         {"loss.coh_weight": w}, "coh_weight", w))
    for i in range(1, 10):
        f = i / 10
        ps.append(Preset(f"depth_{f:g}", f"adapt layers at depth [{max(0.0, f - DEPTH_WINDOW):.1f}, {f:g}], loss at {f:g}",
                         {"adapter.layer_range": [round(max(0.0, f - DEPTH_WINDOW), 2), f], "loss.loss_layer_frac": f},
                         "depth", f))
    for r in (4, 16, 128):
        ps.append(Preset(f"rank_{r}", f"adapter rank r = {r}", {"adapter.r": r}, "rank", float(r)))
    for n in (32, 128, 512):
        ps.append(Preset(f"n_train_{n}", f"train on {n} contrastive pairs", {"train.n_train": n}, "n_train", float(n)))
    return {p.name: p for p in ps}


PRESETS: dict[str, Preset] = _build()


def to_lora(params: dict[str, Any]) -> dict[str, Any]:
    """InnerPiSSA params -> LoRA params: the recipe's loss/train with the run's overrides on top, the same target
    modules and layer range, no SVD fields."""
    recipe = get_recipe(params.get("recipe", DEFAULT_RECIPE))
    adapter = {**recipe.adapter, **params.get("adapter", {})}
    if adapter.get("layers") is not None:
        raise ValueError("preset no_svd: LoRA takes adapter.layer_range, not explicit adapter.layers")
    out = {sec: d for sec in ("loss", "train") if (d := {**getattr(recipe, sec), **params.get(sec, {})})}
    out.update({k: adapter[k] for k in ("target_modules", "layer_range") if k in adapter})
    return out
