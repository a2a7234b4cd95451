"""Named training recipes: complete presets of (adapter, loss, train) config plus concept/data overrides.

A recipe is data: plain dicts of config fields, resolved onto the config classes' defaults. `seed` and
`antipasto` keep their reference's method and loss constants but are sized for SmolLM2-135M on a small CPU
(batch 8 without accumulation, at most 2 epochs / 60 steps with early stopping, lr scaled to match); the seed's
NLL barrier covers every position, as AntiPaSTO's does (on the suffix only it did not protect unseen prompts).
Explicit overrides (CLI, YAML, sweep params) are applied on top, so `recipe + overrides` is always what
ran, and the recipe name plus the resolved configs are recorded with every run. What each recipe takes
from the reference code, and every change we made to run it here, is in docs/recipes.md.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .concepts import ConceptSpec
from .concepts.pairs import SUFFIX_DIR
from .config import AdapterConfig, LossConfig, TrainConfig, parse_section

FOUR_FILES = [  # every vendored suffix file, as both references use (max per file ~ their max_samples / 4)
    {"source": "all_truncated_outputs", "max": 200},
    {"source": "code_questions", "max": 200},
    {"source": "reasoning"},
    {"source": "true_facts", "max": 200},
]


class Recipe(BaseModel):
    """A named preset: config-field overrides per section and concept overrides (suffixes, system prompt)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str
    adapter: dict[str, Any] = Field(default_factory=dict)
    loss: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict, description="ConceptSpec field overrides")


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            name="reprpo-v0",
            description="the objective this project shipped first: batch-level separation along a fixed mean "
                        "direction, NLL barrier on the suffix, fixed-margin monotonic hinge, 24 steps × 8 pairs",
            train={"steps": 24},
        ),
        Recipe(
            name="reprpo-conv",
            description="the reprpo-v0 objective trained to convergence: up to 3 epochs / 120 steps, validated "
                        "every 8 steps, early stopping after 3 validations without improvement",
            train={"steps": None, "epochs": 3, "max_steps": 120, "eval_every": 8, "patience": 3},
        ),
        Recipe(
            name="seed",
            description="the seed code's method: per-pair separation with a full reversal at c = -1, additive S, "
                        "data-aware dims, strong NLL barrier and monotonic hinge, epochs with early stopping",
            adapter={"r": 128, "scale": "add", "dims": "data", "max_angle": 0.3, "layer_range": (0.3, 0.9)},
            loss={"sep_kind": "pair", "loss_layer_frac": 0.75, "last_n_tokens": 8, "coh_weight": 40.0, "tau": 0.5,
                  "coh_positions": "all", "mono_weight": 100.0, "mono_margin": 0.05},
            train={"steps": None, "epochs": 2, "max_steps": 60, "lr": 2e-3, "weight_decay": 1e-5, "batch_size": 8,
                   "eval_every": 8, "patience": 4},
            data={"suffixes": FOUR_FILES, "system_prompt": "none"},
        ),
        Recipe(
            name="antipasto",
            description="the published AntiPaSTO objective: antiparallel projection term, TV barrier over every "
                        "position with an entropy-scaled threshold, entropy-scaled monotonic margin, constraints "
                        "ramped in over 20 %, gradient clipping, loss at mid depth with adapters only before it",
            adapter={"r": 64, "scale": "add", "dims": "data", "max_angle": math.pi / 4, "layer_range": (0.1, 0.45)},
            loss={"sep_kind": "antiparallel", "loss_layer_frac": 0.5, "last_n_tokens": 3, "adapters_before_loss": True,
                  "coh_kind": "tv", "coh_positions": "all", "tv_alpha": 0.9, "coh_weight": 10.0,
                  "mono_kind": "entropy", "mono_frac": 0.4, "mono_weight": 30.0, "warmup": 0.2},
            train={"steps": None, "epochs": 2, "max_steps": 60, "lr": 1e-3, "batch_size": 8, "eval_every": 8,
                   "patience": 4, "grad_clip": 1.0},
            data={"suffixes": FOUR_FILES, "system_prompt": "none"},
        ),
    )
}
DEFAULT_RECIPE = "antipasto"  # the one recipe that passes the hidden-state positive control (README, "Does it learn?")


def get_recipe(name: str) -> Recipe:
    """The recipe `name`; an unknown name lists the valid ones."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}: use one of {', '.join(RECIPES)}")
    return RECIPES[name]


def resolve(
    name: str, adapter: dict | None = None, loss: dict | None = None, train: dict | None = None
) -> tuple[AdapterConfig, LossConfig, TrainConfig]:
    """Configs of recipe `name` with explicit field overrides on top (overrides win); bad keys raise ValueError."""
    r = get_recipe(name)
    return (
        parse_section(AdapterConfig, {**r.adapter, **(adapter or {})}, "adapter"),
        parse_section(LossConfig, {**r.loss, **(loss or {})}, "loss"),
        parse_section(TrainConfig, {**r.train, **(train or {})}, "train"),
    )


def apply_data(spec: ConceptSpec, name: str) -> ConceptSpec:
    """The concept with the recipe's data overrides (suffix sources, system prompt) applied, except where the
    concept chose its own: suffixes from its own file or inline list, or a system prompt it sets explicitly. A
    recipe never silently replaces a researcher's data."""
    data = dict(get_recipe(name).data)
    if "suffixes" in data and not all(s.items is None and (SUFFIX_DIR / f"{s.source}.json").is_file()
                                      for s in spec.suffixes):
        del data["suffixes"]
    if "system_prompt" in data and "system_prompt" in spec.model_fields_set:
        del data["system_prompt"]
    return ConceptSpec(**{**spec.model_dump(), **data}) if data else spec
