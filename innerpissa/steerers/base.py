"""The `Steerer` protocol: every steering method (InnerPiSSA and the baselines) behind one interface.

The evaluator only talks to this protocol: it asks a steerer to `fit` on contrastive pairs, then for
each coefficient c it formats prompts through `messages(msgs, c)` (identity except for prompting
baselines) and runs the model inside `with steerer.steer(model, c):`. c = 0 must be the base model; a steerer
whose c = 0 is the base model bit for bit may say so with `exact_at_zero = True`, and scoring then reuses the base
model's c = 0 forwards (`eval.score`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, ContextManager, Iterator, Protocol, runtime_checkable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..concepts import ContrastPairs
from ..io import atomic_save_tensors, atomic_write_json, load_tensors

Messages = list[dict[str, str]]


@runtime_checkable
class Steerer(Protocol):
    """A steering method: fit on pairs, then steer by a real coefficient c (c = 0 is the base model)."""

    name: str

    def fit(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pairs: ContrastPairs, val: ContrastPairs | None = None) -> None:
        """Learn whatever the method needs from the contrastive pairs (no evaluation data)."""

    def steer(self, model: PreTrainedModel, c: float) -> ContextManager[None]:
        """Context manager: every forward of `model` inside is steered with coefficient c."""

    def messages(self, messages: Messages, c: float) -> Messages:
        """Chat messages to send at coefficient c (identity except for prompt-based methods)."""

    def params(self) -> dict[str, Any]:
        """Hyper-parameters, for the record (JSON-serialisable)."""

    def save(self, path: Path) -> None:
        """Persist the fitted state (safetensors + JSON) so a rerun can skip fitting."""

    def load(self, model: PreTrainedModel, path: Path) -> None:
        """Restore the fitted state written by `save` onto `model`."""


class TensorSteerer:
    """Base for methods whose fitted state is a dict of tensors (vectors, adapters): save/load for free."""

    name = "tensor"

    def __init__(self, **hparams: Any) -> None:
        self.hparams = hparams
        self.tensors: dict[str, torch.Tensor] = {}

    def params(self) -> dict[str, Any]:
        return dict(self.hparams)

    def messages(self, messages: Messages, c: float) -> Messages:
        return messages

    def save(self, path: Path) -> None:
        save_meta(self, path)
        atomic_save_tensors(self.tensors, Path(path) / "steerer.safetensors")

    def load(self, model: PreTrainedModel, path: Path) -> None:
        self.tensors = load_tensors(Path(path) / "steerer.safetensors")


def save_meta(steerer: Steerer, path: Path) -> None:
    """Write steerer.json ({"method", "params"}) so `load_steerer` can rebuild the steerer."""
    atomic_write_json(Path(path) / "steerer.json", {"method": steerer.name, "params": steerer.params()})


@contextlib.contextmanager
def forward_hooks(handles_factory: Any) -> Iterator[None]:
    """Register hooks via `handles_factory()` (returns handles) and always remove them on exit."""
    handles = handles_factory()
    try:
        yield
    finally:
        for h in handles:
            h.remove()
