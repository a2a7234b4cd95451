"""InnerPiSSA: the layer math (layer.py), model surgery / steer / merge / save / load (model.py) and the handle the
ReprPO objective trains (trainable.py)."""

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
from .trainable import InnerPiSSATrainable

__all__ = [
    "InnerPiSSALinear", "rotation", "skew", "AdapterMismatchError", "adapter_layers", "attach",
    "collect_module_inputs", "load_adapter", "merge", "remove", "save_adapter", "steer", "target_names",
    "trainable_parameters", "InnerPiSSATrainable",
]
