"""Typed configs for the adapter, the ReprPO loss and training (pydantic: bad values fail loudly)."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def content_hash(self, n: int = 12) -> str:
        """Short sha256 of the canonical JSON of this config (names run/cache directories)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:n]


def validation_message(e: ValidationError, prefix: str = "") -> str:
    """pydantic's multi-line report as one line, `loc: msg; ...` (locs under `prefix`), for one-line errors."""
    def loc(err: dict) -> str:
        return ".".join(map(str, ([prefix] if prefix else []) + list(err["loc"]))) or "config"

    return "; ".join(f"{loc(err)}: {err['msg']}" for err in e.errors())


def parse_section(cls: type[_Strict], values: dict | None, name: str) -> _Strict:
    """`cls(**values)`, but an unknown key or bad value raises one ValueError line naming it and the valid fields."""
    values = dict(values or {})
    unknown = sorted(set(values) - set(cls.model_fields))
    if unknown:
        raise ValueError(f"unknown config path(s) {', '.join(f'{name}.{k}' for k in unknown)}; "
                         f"{name} fields are: {', '.join(cls.model_fields)}")
    try:
        return cls(**values)
    except ValidationError as e:
        raise ValueError(f"bad config value {validation_message(e, name)}") from None


def set_path(params: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of nested `params` with the dotted `path` ("train.steps") set to `value`."""
    out = copy.deepcopy(params)
    *parents, leaf = path.split(".")
    node = out
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"config path {path!r} goes through {p!r}, which is not a mapping")
    node[leaf] = value
    return out


class AdapterConfig(_Strict):
    """Where and how InnerPiSSA adapts: r singular directions of chosen linear layers, rotated and rescaled."""

    r: int = Field(64, gt=0, description="singular directions kept per layer")
    target_modules: tuple[str, ...] = Field(("o_proj", "down_proj"), min_length=1)
    layers: tuple[int, ...] | None = Field(None, description="decoder-layer indices; overrides layer_range")
    layer_range: tuple[float, float] = Field((0.3, 0.8), description="depth fractions [lo, hi] of layers to adapt")
    rotate_v: bool = True
    rotate_u: bool = False
    rotation: Literal["cayley", "matrix_exp"] = "cayley"
    max_angle: float = Field(0.3, gt=0, description="soft clamp θ of the skew generator, radians")
    scale: Literal["mult", "add", "tanh", "none"] = "mult"
    dims: Literal["top", "data"] = Field("top", description="top-r by singular value, or most contrast-varying")
    init_std: float = Field(1e-3, ge=0, description="std of the small random init of the learnable parameters")

    @model_validator(mode="after")
    def _check(self) -> "AdapterConfig":
        lo, hi = self.layer_range
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"layer_range must satisfy 0 <= lo <= hi <= 1, got {self.layer_range}")
        if not (self.rotate_v or self.rotate_u or self.scale != "none"):
            raise ValueError("nothing to learn: enable rotate_v, rotate_u or a scale mode other than 'none'")
        return self


class LossConfig(_Strict):
    """ReprPO terms and their weights; each term can be switched off for ablations."""

    loss_layer_frac: float = Field(0.8, ge=0.0, le=1.0, description="depth of the layer whose hidden states are separated")
    loss_modules: tuple[str, ...] = Field(("o_proj", "down_proj"), description="modules whose U spans the loss basis")
    loss_r: int = Field(64, gt=0, description="rank of the loss basis per module")
    last_n_tokens: int = Field(4, gt=0)
    direction_topk: int | None = Field(None, gt=0, description="keep only the top-k dims of the preference direction")
    separation: bool = True
    sep_weight: float = Field(1.0, ge=0)
    coherence: bool = True
    coh_weight: float = Field(3.0, ge=0, description="chosen on the dd-honesty tuning half, see docs/ideas_that_failed.md")
    tau: float = Field(0.5, ge=0, description="coherence margin: allowed per-token NLL increase, nats")
    monotonic: bool = True
    mono_weight: float = Field(1.0, ge=0)
    mono_margin: float = Field(0.05, ge=0)
    adaptive: bool = Field(False, description="loosen coherence for the direction that lags in separation")
    # published-recipe terms (docs/recipes.md); the defaults reproduce the reprpo-v0 objective
    sep_kind: Literal["batch", "pair", "antiparallel"] = Field(
        "batch", description="batch: mean shift along u; pair: per pair, c=-1 reverses (seed); antiparallel: AntiPaSTO")
    coh_kind: Literal["nll", "tv"] = Field("nll", description="per-token NLL increase over tau, or TV distance barrier")
    coh_positions: Literal["suffix", "all"] = Field("suffix", description="coherence on the suffix tokens or every position")
    tv_alpha: float = Field(0.9, gt=0, le=1, description="TV threshold = tv_alpha * sqrt(H_ref + 0.02)")
    mono_kind: Literal["fixed", "entropy"] = Field("fixed", description="fixed margin on the mean gap, or per-pair sqrt(H) margin")
    mono_frac: float = Field(0.4, ge=0, description="entropy margin: theta = mono_frac * sqrt(H_ref) + 0.04 nats")
    warmup: float = Field(0.0, ge=0, lt=1, description="ramp coherence and monotonic weights in over this fraction of steps")
    adapters_before_loss: bool = Field(False, description="require every adapted layer to be strictly before the loss layer")


class TrainConfig(_Strict):
    """Optimisation: AdamW + schedule, batches, validation/early stopping, checkpoints."""

    seed: int = Field(0, ge=0, lt=2**32, description="numpy/torch seeds must be in 0..2**32-1")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    batch_size: int = Field(8, gt=0, description="pairs per micro-batch")
    grad_accum: int = Field(1, gt=0)
    steps: int | None = Field(24, gt=0, description="fixed optimizer steps; None: train by epochs (below)")
    epochs: float = Field(3.0, gt=0, description="with steps=None: passes over the training pairs")
    max_steps: int | None = Field(None, gt=0, description="with steps=None: cap on optimizer steps")
    min_delta: float = Field(0.0, ge=0, description="a validation loss must beat the best by this much to count")
    grad_clip: float | None = Field(None, gt=0, description="clip the gradient norm to this (None: no clipping)")
    n_train: int | None = Field(None, gt=0, description="cap on training pairs (None = all)")
    n_val: int = Field(16, gt=0, description="cap on validation pairs")
    eval_every: int = Field(8, gt=0, description="validate every N steps")
    patience: int | None = Field(None, gt=0, description="early-stop after N validations without improvement")
    checkpoint_every: int = Field(8, gt=0)
    max_length: int = Field(128, gt=8)
    cache_reference: bool = Field(True, description="cache frozen-model hidden states/log-probs once")
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA and on CPUs with native bf16, else fp32 (innerpissa.precision)")

    @model_validator(mode="before")
    @classmethod
    def _legacy_bf16(cls, data: object) -> object:
        """Configs saved before `precision` had `bf16: bool` (bf16 on CUDA only): True -> auto, False -> fp32."""
        if isinstance(data, dict) and "bf16" in data:
            rest = {k: v for k, v in data.items() if k != "bf16"}
            return {"precision": "auto" if data["bf16"] else "fp32", **rest}  # an explicit precision wins
        return data
