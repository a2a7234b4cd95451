"""Read activations with forward hooks: the one helper behind every "what did this module see / write" read.

Used by the trainer (loss-layer states, with gradients), the data-aware dims (module inputs), the arithmetic
baselines (decoder-layer outputs) and `sspace` (module outputs). Hooks are always removed on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable, Iterator, Mapping
from typing import Any, Literal

import torch
from torch import nn


@contextlib.contextmanager
def capture(
    modules: Mapping[Hashable, nn.Module], last_n: int, of: Literal["output", "input"] = "output"
) -> Iterator[dict[Hashable, torch.Tensor]]:
    """Within the block, `store[key]` is that module's output (or first positional input) at the last `last_n`
    positions of its latest forward, left in the autograd graph (detach it for no-grad reads)."""
    if of not in ("output", "input"):
        raise ValueError(f"capture of={of!r}: use 'output' or 'input'")
    store: dict[Hashable, torch.Tensor] = {}

    def hook(key: Hashable):
        def read(mod: nn.Module, args: tuple, out: Any) -> None:
            t = args[0] if of == "input" else (out[0] if isinstance(out, tuple) else out)
            store[key] = t[:, -last_n:]

        return read

    handles = [m.register_forward_hook(hook(k)) for k, m in modules.items()]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()
