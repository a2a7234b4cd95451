"""InnerPiSSA: the layer math (layer.py) and model surgery / steer / merge / save / load (model.py)."""

from .layer import InnerPiSSALinear, rotation, skew
from .model import (
    AdapterMismatchError,
    adapter_layers,
    attach,
    collect_module_inputs,
    load_adapter,
    merge,
    remove,
    save_adapter,
    steer,
    target_names,
    trainable_parameters,
)

__all__ = [
    "InnerPiSSALinear", "rotation", "skew", "AdapterMismatchError", "adapter_layers", "attach",
    "collect_module_inputs", "load_adapter", "merge", "remove", "save_adapter", "steer", "target_names",
    "trainable_parameters",
]
