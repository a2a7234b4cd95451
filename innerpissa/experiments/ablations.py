"""Ablation presets in runs and sweeps: each preset is a documented delta from one method's run, declared by that
method (`SteererBase.presets`: InnerPiSSA's ablation plan) and applied by it (`SteererBase.apply_preset`, which may
swap the method, as InnerPiSSA's `no_svd` does to LoRA). Seeds are not a preset: list them under `seeds:` in a sweep
spec. `Preset.group` and `Preset.value` (e.g. group "depth", value 0.3) let reports plot a family against its value.
"""

from __future__ import annotations

from .. import steerers
from ..config import set_path
from ..steerers import Preset
from .run import RunConfig

__all__ = ["PRESETS", "Preset", "apply_preset", "get_preset", "set_path"]

PRESETS: dict[str, Preset] = {name: preset for name, (_, preset) in steerers.presets().items()}


def get_preset(name: str) -> Preset:
    """The preset called `name`; unknown names list the valid ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown ablation preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]


def apply_preset(cfg: RunConfig, name: str | None) -> RunConfig:
    """`cfg` with the preset's delta applied (by the method that declares it) and `preset` recorded; None returns
    `cfg` unchanged."""
    if name is None:
        return cfg
    preset = get_preset(name)
    owner = steerers.presets()[name][0]
    if cfg.method != owner:
        raise ValueError(f"ablation preset {name!r} is a delta from method {owner}, but this run's method is {cfg.method}")
    method, params = steerers.steerer_class(owner).apply_preset(preset, cfg.params)
    steerers.steerer_class(method).check_params(params)
    return RunConfig.model_validate({**cfg.model_dump(), "method": method, "params": params, "preset": name})
