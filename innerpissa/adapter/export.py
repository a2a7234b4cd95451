"""Export an InnerPiSSA adapter at a fixed coefficient c as a standard peft LoRA adapter (exact, not a fit).

At fixed c a layer's weight change is ΔW(c) = U (R_u(c) diag(S'(c)) R_v(c)ᵀ − diag(S)) Vᵀ, of rank ≤ r, so it
factors exactly as B·A with A = Vᵀ [r, in] and B = U·core_delta(c) [out, r]. With lora_alpha = r peft's
scaling is 1 and its forward x + B(A x) is our steered forward at c. The exported adapter is *linear* in
peft's scale (scale t gives t·ΔW(c)); InnerPiSSA at t·c is not (rotations, exp scaling): export one
adapter per coefficient you want to serve.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

import torch
from peft import LoraConfig
from peft.tuners.tuners_utils import check_target_module_exists
from transformers import PreTrainedModel

from ..io import atomic_save_tensors
from ..models import model_id
from ..surgery import layers_prefix
from .layer import InnerPiSSALinear
from .model import adapter_layers

WEIGHTS_FILE = "adapter_model.safetensors"  # peft's file names
PEFT_PREFIX = "base_model.model."  # how PeftModelForCausalLM names the wrapped model's modules


@torch.no_grad()
def lora_factors(layer: InnerPiSSALinear, c: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(A [r, in], B [out, r]) with B·A = ΔW(c) of this layer exactly: A = Vᵀ, B = U·core_delta(c)."""
    return layer.V.T.contiguous(), (layer.U @ layer.core_delta(c)).contiguous()


def exact_factors(model: PreTrainedModel, c: float) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(A, B) of every InnerPiSSA layer at c, by module name (the one source of every export format); a non-finite
    c, a model without adapter layers or a non-finite factor raises ValueError."""
    if not math.isfinite(c):
        raise ValueError(f"export coefficient must be a finite number, got {c}")
    layers = adapter_layers(model)
    if not layers:
        raise ValueError("model has no InnerPiSSA layers to export: attach or load an adapter first")
    out = {}
    for n, layer in layers.items():
        A, B = lora_factors(layer, c)
        if not (torch.isfinite(A).all() and torch.isfinite(B).all()):
            raise ValueError(f"adapter at c={c:g} gives a non-finite weight change in {n}; use a smaller |c|")
        out[n] = (A, B)
    return out


def peft_lora(model: PreTrainedModel, c: float) -> tuple[LoraConfig, dict[str, torch.Tensor]]:
    """The peft LoraConfig and state dict (peft's key names) of the model's InnerPiSSA adapter frozen at c."""
    factors = exact_factors(model, c)
    layers = adapter_layers(model)
    prefix = layers_prefix(model)
    idx = sorted({int(n[len(prefix) + 1:].split(".")[0]) for n in layers})
    targets = sorted({n.split(".")[-1] for n in layers})
    ranks = {n: layer.S.numel() for n, layer in layers.items()}
    r = Counter(ranks.values()).most_common(1)[0][0]
    odd = {re.escape(n): k for n, k in ranks.items() if k != r}  # modules keeping fewer dims (small matrices)
    cfg = LoraConfig(
        r=r, lora_alpha=r, rank_pattern=odd, alpha_pattern=odd, target_modules=targets, layers_to_transform=idx,
        layers_pattern=prefix.split(".")[-1], lora_dropout=0.0, bias="none", task_type="CAUSAL_LM", inference_mode=True,
        base_model_name_or_path=model_id(model),
    )
    matched = {n for n, _ in model.named_modules() if check_target_module_exists(cfg, n)}
    if matched != set(layers):  # e.g. a target name that also matches modules we did not adapt
        raise ValueError(f"cannot express the adapted module set as peft target_modules + layers_to_transform: "
                         f"peft would also adapt {sorted(matched - set(layers))[:3]}")
    tensors = {}
    for n, (A, B) in factors.items():
        tensors[f"{PEFT_PREFIX}{n}.lora_A.weight"] = A
        tensors[f"{PEFT_PREFIX}{n}.lora_B.weight"] = B
    return cfg, tensors


def save_peft_lora(model: PreTrainedModel, c: float, path: str | Path) -> None:
    """Write adapter_config.json + adapter_model.safetensors that `PeftModel.from_pretrained(base, path)` loads."""
    cfg, tensors = peft_lora(model, c)
    path = Path(path)
    atomic_save_tensors(tensors, path / WEIGHTS_FILE, metadata={"format": "pt"})
    cfg.save_pretrained(str(path))
