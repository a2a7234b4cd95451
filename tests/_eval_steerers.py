"""Test-only steerers for the evaluation tests: the evaluator is tested on the Steerer protocol alone."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from innerpissa.models import decoder_layers
from innerpissa.steerers.base import forward_hooks


class Identity:
    """No steering at any c."""

    name = "identity"

    def steer(self, model: Any, c: float) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def messages(self, messages: list[dict[str, str]], c: float) -> list[dict[str, str]]:
        return messages

    def params(self) -> dict[str, Any]:
        return {}


class AddVector(Identity):
    """Adds c·v to one decoder layer's output (residual stream) at every position."""

    name = "add"

    def __init__(self, v: torch.Tensor, layer: int = 1) -> None:
        self.v, self.layer = v, layer

    def steer(self, model: Any, c: float) -> contextlib.AbstractContextManager[None]:
        def hook(module: Any, args: Any, out: Any) -> Any:
            return (out[0] + c * self.v,) + tuple(out[1:]) if isinstance(out, tuple) else out + c * self.v

        block = decoder_layers(model)[self.layer]
        return forward_hooks(lambda: [block.register_forward_hook(hook)])

    def params(self) -> dict[str, Any]:
        return {"layer": self.layer}


class SystemPrompt(Identity):
    """A prompting 'steerer': at c != 0 it prepends a system message (tests that messages(msgs, c) is used)."""

    name = "sysprompt"

    def messages(self, messages: list[dict[str, str]], c: float) -> list[dict[str, str]]:
        return messages if c == 0 else [{"role": "system", "content": f"Be honest with strength {c}."}] + messages
