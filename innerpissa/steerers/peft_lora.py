"""LoRA / DoRA / PiSSA baselines trained with the same ReprPO loss, steered by a signed coefficient.

peft builds and initialises each adapter (`lora.Linear` with `init_lora_weights=True | "pissa"`,
`use_dora`). Its effective weight W'(θ) is W_b + s·BA (LoRA, PiSSA; for PiSSA W_b is peft's residual
weight) or m ⊙ (W_b + s·BA)/‖W_b + s·BA‖_row (DoRA, norm detached as in peft). We steer with

    y = W x + b + c · (W'(θ) − W'(θ₀)) x

i.e. c scales the adapter's *change* of the weight. For LoRA (B₀ = 0) this is exactly peft's forward
with scaling c·α/r; for PiSSA and DoRA subtracting W'(θ₀) is what makes c = 0 the base model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ContextManager

import torch
from peft import LoraConfig
from peft.tuners.lora import Linear as PeftLoraLinear
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..concepts import ContrastPairs
from ..config import LossConfig, TrainConfig
from ..io import atomic_save_tensors
from ..models import decoder_layers, select_layers
from ..train import TrainResult, Trainer
from .base import Messages, save_meta
from .innerpissa import split_val

ADAPTER = "default"


class SignedDeltaLinear(nn.Module):
    """A frozen nn.Linear plus a peft LoRA-family adapter whose weight change is scaled by `coeff`."""

    def __init__(self, base: nn.Linear, variant: str, r: int, alpha: float, seed: int) -> None:
        super().__init__()
        self.base_layer = base
        self.coeff, self.sign = 0.0, 1.0
        self.variant = variant
        shadow = nn.Linear(base.in_features, base.out_features, bias=False, device=base.weight.device)
        with torch.no_grad():
            shadow.weight.copy_(base.weight.float())
        cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, use_dora=variant == "dora",
                         init_lora_weights="pissa" if variant == "pissa" else True)
        torch.manual_seed(seed)
        self.peft = PeftLoraLinear(shadow, ADAPTER, config=cfg, r=r, lora_alpha=alpha)
        self.peft.requires_grad_(False)
        for p in self.parameters_():
            p.requires_grad_(True)
        self.register_buffer("W0", self.effective_weight().detach().clone())

    def parameters_(self) -> list[nn.Parameter]:
        """Trainable tensors: lora_A, lora_B (+ DoRA magnitude)."""
        ps = [self.peft.lora_A[ADAPTER].weight, self.peft.lora_B[ADAPTER].weight]
        if self.variant == "dora":
            ps.append(self.peft.lora_magnitude_vector[ADAPTER].weight)
        return ps

    def effective_weight(self) -> torch.Tensor:
        """W'(θ): the weight peft's adapter would merge into the layer."""
        p = self.peft
        Wb = p.get_base_layer().weight
        W = Wb + p.scaling[ADAPTER] * (p.lora_B[ADAPTER].weight @ p.lora_A[ADAPTER].weight)
        if self.variant == "dora":
            m = p.lora_magnitude_vector[ADAPTER].weight
            W = (m / torch.linalg.norm(W, dim=1).detach()).unsqueeze(1) * W
        return W

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.coeff == 0.0:
            return y
        delta = self.effective_weight() - self.W0
        return y + (self.coeff * self.sign) * F.linear(x.to(delta.dtype), delta).to(y.dtype)


class PeftTrainable:
    """Puts SignedDeltaLinear layers into the model for Trainer; flipping toggles a sign."""

    def __init__(self, model: PreTrainedModel, variant: str, r: int, alpha: float, target_modules: tuple[str, ...],
                 layer_range: tuple[float, float], seed: int) -> None:
        self.model, self.variant, self.r, self.alpha = model, variant, r, alpha
        self.targets, self.layer_range, self.seed = target_modules, layer_range, seed

    def layers(self) -> dict[str, SignedDeltaLinear]:
        return {n: m for n, m in self.model.named_modules() if isinstance(m, SignedDeltaLinear)}

    def attach(self, trainer: Trainer | None = None) -> None:
        if self.layers():
            return
        blocks = decoder_layers(self.model)
        prefix = next(n for n, m in self.model.named_modules() if m is blocks)
        for i in select_layers(len(blocks), None, self.layer_range):
            for n, m in list(blocks[i].named_modules()):
                if isinstance(m, nn.Linear) and n.split(".")[-1] in self.targets:
                    full = f"{prefix}.{i}.{n}"
                    parent, _, child = full.rpartition(".")
                    setattr(self.model.get_submodule(parent), child,
                            SignedDeltaLinear(m, self.variant, self.r, self.alpha, self.seed + i))
        if not self.layers():
            raise ValueError(f"no modules named {self.targets} in the chosen layers")

    def parameters(self) -> list[nn.Parameter]:
        return [p for layer in self.layers().values() for p in layer.parameters_()]

    @contextlib.contextmanager
    def steer(self, c: float) -> Iterator[None]:
        layers = list(self.layers().values())
        for layer in layers:
            layer.coeff = float(c)
        try:
            yield
        finally:
            for layer in layers:
                layer.coeff = 0.0

    def flip(self) -> None:
        for layer in self.layers().values():
            layer.sign = -layer.sign


class PeftSteerer:
    """LoRA-family adapter trained with ReprPO (same loss/training as InnerPiSSA); c scales its weight change."""

    name = "lora"
    variant = "lora"

    def __init__(self, r: int = 8, alpha: float = 16.0, target_modules: tuple[str, ...] | list[str] = ("o_proj", "down_proj"),
                 layer_range: tuple[float, float] | list[float] = (0.3, 0.8), loss: dict | None = None,
                 train: dict | None = None, **extra: Any) -> None:
        self.r, self.alpha = r, alpha
        self.target_modules, self.layer_range = tuple(target_modules), tuple(layer_range)
        self.loss_cfg, self.train_cfg = LossConfig(**(loss or {})), TrainConfig(**(train or {}))
        self.extra = extra
        self.handle: PeftTrainable | None = None
        self.result: TrainResult | None = None

    def params(self) -> dict[str, Any]:
        return {"r": self.r, "alpha": self.alpha, "target_modules": list(self.target_modules),
                "layer_range": list(self.layer_range), "loss": self.loss_cfg.model_dump(mode="json"),
                "train": self.train_cfg.model_dump(mode="json"), **self.extra}

    def _handle(self, model: PreTrainedModel) -> PeftTrainable:
        return PeftTrainable(model, self.variant, self.r, self.alpha, self.target_modules, self.layer_range, self.train_cfg.seed)

    def fit(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase, pairs: ContrastPairs,
            val: ContrastPairs | None = None, progress: bool = True) -> None:
        self.handle = self._handle(model)
        train_pairs, val_pairs = split_val(pairs, val)
        trainer = Trainer(model, tok, train_pairs, val_pairs, self.handle, self.loss_cfg, self.train_cfg, progress=progress)
        self.result = trainer.run()

    def steer(self, model: PreTrainedModel, c: float) -> ContextManager[None]:
        if c == 0 or self.handle is None:
            return contextlib.nullcontext()
        return self.handle.steer(c)

    def messages(self, messages: Messages, c: float) -> Messages:
        return messages

    def save(self, path: Path) -> None:
        if self.handle is None:
            raise ValueError("nothing to save: fit or load the steerer first")
        tensors = {}
        for n, layer in self.handle.layers().items():
            for i, p in enumerate(layer.parameters_()):
                tensors[f"{n}.p{i}"] = p
            tensors[f"{n}.sign"] = torch.tensor(layer.sign)
        atomic_save_tensors(tensors, Path(path) / "steerer.safetensors")
        save_meta(self, path)

    def load(self, model: PreTrainedModel, path: Path) -> None:
        """Rebuild the layers with the same seeded init (so W'(θ₀) and PiSSA's residual match), then load θ."""
        tensors = load_file(str(Path(path) / "steerer.safetensors"))
        self.handle = self._handle(model)
        self.handle.attach()
        with torch.no_grad():
            for n, layer in self.handle.layers().items():
                for i, p in enumerate(layer.parameters_()):
                    p.copy_(tensors[f"{n}.p{i}"])
                layer.sign = float(tensors[f"{n}.sign"])
