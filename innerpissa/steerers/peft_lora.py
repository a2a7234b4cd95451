"""LoRA / DoRA / PiSSA baselines trained with the same ReprPO loss, steered by a signed coefficient.

Each target nn.Linear is replaced (`surgery.replace_module`, the same surgery as InnerPiSSA) by peft's own
`lora.Linear` around the *unchanged* base layer; peft builds and initialises the adapter
(`init_lora_weights=True | "pissa"`, `use_dora`). Its effective weight W'(θ) is W + s·BA (LoRA), W_res + s·BA
with W_res = W − s·B₀A₀ (PiSSA), or m ⊙ (W + s·BA)/‖W + s·BA‖_row (DoRA, norm detached as in peft), s = α/r.
We steer with

    y = W x + b + c · (W'(θ) − W'(θ₀)) x

i.e. c scales the adapter's *change* of the weight, through peft's forward:

- LoRA: the layer's scaling is c·s (peft's `set_scale(c)`), exactly peft's forward at that scale.
- PiSSA: the base weight stays W and a frozen second peft adapter `init` holds (A₀, B₀) at scaling −c·s,
  so y = W x + b + c·s·(BA − B₀A₀) x; no residual copy of W is kept.
- DoRA: the scaling stays s and the output is lerp(base(x), peft(x), c) = base + c·(W'(θ) − W) x (a forward
  hook), since peft's DoRA is not linear in its scaling; W'(θ₀) = W because peft initialises m = ‖W‖_row.

At rest (outside `steer`, or c = 0) the model holds its plain base layers again: bit-exactly the base model at
no cost; `steer(c)` puts the peft layers back in (one `replace_module` per layer).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ContextManager

import torch
from peft import LoraConfig
from peft.tuners.lora import Linear as PeftLoraLinear
from pydantic import Field
from safetensors import safe_open
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..concepts import ContrastPairs
from ..config import LossConfig, TrainConfig, parse_section
from ..io import atomic_save_tensors, load_tensors
from ..models import decoder_layers, select_layers
from ..surgery import check_fingerprint, fingerprint, layers_prefix, linear_names, replace_module
from ..train import TrainResult, Trainer
from ._addition import check_coeff
from .base import SteererBase, SteererParams, save_meta
from .innerpissa import split_val

ADAPTER = "default"
INIT = "init"  # PiSSA's frozen initial factors, subtracted so that c = 0 is the base model


def peft_layer(base: nn.Linear, variant: str, r: int, alpha: float, seed: int) -> PeftLoraLinear:
    """peft's lora.Linear around `base` (left unchanged), initialised by peft with a local seed; adapter frozen."""
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, use_dora=variant == "dora")
    with torch.random.fork_rng(devices=[base.weight.device] if base.weight.is_cuda else []):
        torch.manual_seed(seed)  # peft draws lora_A from the global RNG: fork it, never reseed the caller's
        layer = PeftLoraLinear(base, ADAPTER, config=cfg, r=r, lora_alpha=alpha)
    if variant == "pissa":  # peft's PiSSA init on a throw-away copy: its principal factors, our W untouched
        tmp = nn.Linear(base.in_features, base.out_features, bias=False, device=base.weight.device)
        with torch.no_grad():
            tmp.weight.copy_(base.weight.float())
        init = PeftLoraLinear(tmp, ADAPTER, config=LoraConfig(r=r, lora_alpha=alpha, init_lora_weights="pissa"),
                              r=r, lora_alpha=alpha)
        layer.update_layer(INIT, r, lora_alpha=alpha, config=LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0))
        with torch.no_grad():
            for name in (ADAPTER, INIT):
                layer.lora_A[name].weight.copy_(init.lora_A[ADAPTER].weight)
                layer.lora_B[name].weight.copy_(init.lora_B[ADAPTER].weight)
        layer.set_adapter([ADAPTER, INIT])
    layer.requires_grad_(False)
    layer.to(base.weight.device)
    return layer


def trainable_tensors(layer: PeftLoraLinear) -> list[nn.Parameter]:
    """The layer's trainable tensors in a fixed order: lora_A, lora_B (+ DoRA magnitude)."""
    ps = [layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight]
    if ADAPTER in layer.lora_magnitude_vector:
        ps.append(layer.lora_magnitude_vector[ADAPTER].weight)
    return ps


class PeftTrainable:
    """peft lora.Linear layers in `model` for Trainer; `steer(c)` sets peft's scaling, `flip` negates the sign of c."""

    base_weights_in_forward_only = False  # DoRA reads its base weight for the column norm

    def __init__(self, model: PreTrainedModel, variant: str, r: int, alpha: float, target_modules: tuple[str, ...],
                 layer_range: tuple[float, float], seed: int) -> None:
        self.model, self.variant, self.r, self.alpha = model, variant, r, alpha
        self.targets, self.layer_range, self.seed = target_modules, layer_range, seed
        self._layers: dict[str, PeftLoraLinear] = {}
        self.sign, self.coeff = 1.0, 0.0

    def layers(self) -> dict[str, PeftLoraLinear]:
        """The attached peft layers by module name (empty before `attach`)."""
        return dict(self._layers)

    def attach(self, trainer: Trainer | None = None) -> None:
        """Replace each target nn.Linear by a peft lora.Linear (seeded per decoder layer); idempotent."""
        if self._layers:
            return
        idx = select_layers(len(decoder_layers(self.model)), None, self.layer_range)
        names = linear_names(self.model, idx, self.targets)
        prefix = layers_prefix(self.model)
        if not names:
            raise ValueError(f"no modules named {self.targets} in the chosen layers")
        self.model.requires_grad_(False)
        for name in names:
            base = self.model.get_submodule(name)
            if not isinstance(base, nn.Linear):
                raise ValueError(f"{name} is already adapted ({type(base).__name__}); use a fresh model")
            layer = peft_layer(base, self.variant, self.r, self.alpha, self.seed + int(name[len(prefix) + 1:].split(".")[0]))
            if self.variant == "dora":
                layer.register_forward_hook(self._dora_hook)
            self._layers[name] = layer  # put into the model by `_apply` whenever c != 0
        for p in self.parameters():
            p.requires_grad_(True)
        self._apply(0.0)

    def _dora_hook(self, layer: PeftLoraLinear, args: tuple, out: torch.Tensor) -> torch.Tensor:
        """base + w·(peft's DoRA output − base), w = sign·c (c = 0 never gets here: the base layer is in)."""
        w = self.sign * self.coeff
        return out if w == 1.0 else torch.lerp(layer.base_layer(args[0]), out, w)

    def _apply(self, c: float) -> None:
        """Set every layer to coefficient c through peft's scaling (DoRA: its hook); at c = 0 the model gets its
        plain base layers back (bit-exact, no adapter cost), otherwise the peft layers are put in."""
        self.coeff = float(c)
        for name, layer in self._layers.items():
            replace_module(self.model, name, layer if self.coeff else layer.base_layer)
            if self.variant != "dora":
                layer.set_scale(ADAPTER, self.sign * self.coeff)
            if self.variant == "pissa":
                layer.set_scale(INIT, -self.sign * self.coeff)

    def parameters(self) -> list[nn.Parameter]:
        """Trainable tensors of every layer (A, B, + DoRA magnitude), in module order."""
        return [p for layer in self._layers.values() for p in trainable_tensors(layer)]

    @contextlib.contextmanager
    def steer(self, c: float) -> Iterator[None]:
        """Every forward inside runs at coefficient c; the previous coefficient comes back on exit."""
        if not self._layers:
            raise ValueError("LoRA-family steerer has no layers on this model: fit or load it first")
        prev = self.coeff
        self._apply(check_coeff(c))
        try:
            yield
        finally:
            self._apply(prev)

    def flip(self) -> None:
        """c -> −c for every layer (the sign is saved with the adapter)."""
        self.sign = -self.sign
        self._apply(self.coeff)


def check_base(model: PreTrainedModel, file: Path, method: str) -> None:
    """Refuse a saved adapter whose base-model fingerprint (weights sha256, shapes) is not `model`'s."""
    with safe_open(str(file), "pt") as f:
        saved = json.loads((f.metadata() or {}).get("fingerprint", "null"))
        names = sorted({k.rsplit(".", 1)[0] for k in f.keys()})
    if saved is not None:  # None: saved before fingerprints were recorded, nothing to check against
        check_fingerprint(model, names, saved, f"{method} steerer in {file.parent}")


class LoraParams(SteererParams):
    """The adapter of the LoRA family (peft's `lora.Linear`): rank, scale α (s = α/r), modules, depth range."""

    r: int = Field(8, gt=0, description="adapter rank")
    alpha: float = Field(16.0, gt=0, description="peft's lora_alpha: the adapter's scale is alpha / r")
    target_modules: tuple[str, ...] = Field(("o_proj", "down_proj"), min_length=1)
    layer_range: tuple[float, float] = Field((0.3, 0.8), description="depth fractions [lo, hi] of layers to adapt")


class PeftParams(LoraParams):
    """LoRA-family params: the adapter, plus the ReprPO `loss` and `train` sections (InnerPiSSA's configs)."""

    loss: dict[str, Any] | None = None
    train: dict[str, Any] | None = None


class PeftSteerer(SteererBase):
    """LoRA-family adapter trained with ReprPO (same loss/training as InnerPiSSA); c scales its weight change."""

    name = "lora"
    Params = PeftParams
    sections = {"loss": LossConfig, "train": TrainConfig}
    seed_param = "train.seed"
    trainable = True
    exact_at_zero = True  # c = 0 is the base model bit for bit (tested): scoring may reuse base forwards
    overrides = {"steps": "train.steps", "precision": "train.precision"}
    rank = 6
    variant = "lora"

    def __init__(self, **params: Any) -> None:
        """`loss`/`train` sections are validated field by field: a typo raises, naming the valid fields."""
        p = self.parse(params)
        self.r, self.alpha = p.r, p.alpha
        self.target_modules, self.layer_range = tuple(p.target_modules), tuple(p.layer_range)
        self.loss_cfg = parse_section(LossConfig, p.loss, "loss")
        self.train_cfg = parse_section(TrainConfig, p.train, "train")
        self.handle: PeftTrainable | None = None
        self.result: TrainResult | None = None

    def params(self) -> dict[str, Any]:
        return {"r": self.r, "alpha": self.alpha, "target_modules": list(self.target_modules),
                "layer_range": list(self.layer_range), "loss": self.loss_cfg.model_dump(mode="json"),
                "train": self.train_cfg.model_dump(mode="json")}

    def _handle(self, model: PreTrainedModel) -> PeftTrainable:
        return PeftTrainable(model, self.variant, self.r, self.alpha, self.target_modules, self.layer_range, self.train_cfg.seed)

    def fit(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase, pairs: ContrastPairs,
            val: ContrastPairs | None = None, *, ckpt_dir: Path | None = None, resume: bool = False,
            progress: bool = True) -> None:
        """Train with the InnerPiSSA trainer (same loop, checkpoints in `ckpt_dir`, `resume` continues them)."""
        self.handle = self._handle(model)
        train_pairs, val_pairs = split_val(pairs, val)
        trainer = Trainer(model, tok, train_pairs, val_pairs, self.handle, self.loss_cfg, self.train_cfg,
                          ckpt_dir, progress=progress)
        self.result = trainer.run(resume=resume)

    def steer(self, model: PreTrainedModel, c: float) -> ContextManager[None]:
        if self.handle is None:
            raise ValueError(f"{self.name} steerer is not fitted: call fit() or load it from a saved directory")
        if self.handle.model is not model:
            raise ValueError(f"{self.name} steerer was fitted/loaded on another model instance: load it onto this one")
        return self.handle.steer(c)

    def save(self, path: Path) -> None:
        if self.handle is None:
            raise ValueError("nothing to save: fit or load the steerer first")
        tensors = {}
        for n, layer in self.handle.layers().items():
            for i, p in enumerate(trainable_tensors(layer)):
                tensors[f"{n}.p{i}"] = p
            tensors[f"{n}.sign"] = torch.tensor(self.handle.sign)
        fp = fingerprint(self.handle.model, sorted(self.handle.layers()))  # sorted: as `check_base` reads them
        atomic_save_tensors(tensors, Path(path) / "steerer.safetensors", metadata={"fingerprint": json.dumps(fp)})
        save_meta(self, path)

    def load(self, model: PreTrainedModel, path: Path) -> None:
        """Rebuild the layers with the same seeded init (so W'(θ₀) and PiSSA's A₀, B₀ match), then load θ."""
        file = Path(path) / "steerer.safetensors"
        tensors = load_tensors(file)
        check_base(model, file, self.name)
        self.handle = self._handle(model)
        self.handle.attach()
        with torch.no_grad():
            for n, layer in self.handle.layers().items():
                for i, p in enumerate(trainable_tensors(layer)):
                    p.copy_(tensors[f"{n}.p{i}"])
        self.handle.sign = float(next(v for k, v in tensors.items() if k.endswith(".sign")))
        self.handle._apply(0.0)
