"""The yardstick's positive control: a transfer set says something about a steering method on a model only if
prompting (the method's target, spelled out in the prompt) moves that set on that model.

A (model, set) **qualifies** when the prompting variant chosen on the tuning half moves the reporting half with a
side-balanced effect whose 95 % CI is above 0. That is the rule; the stronger test is `above_null`: whether the
effect is above the 95 % prediction band of random directions at the prompt's own KL (a random direction can move
a set's side-balanced score too, in either sign). `bench/qualify.py` measures every built-in model and writes the
verdicts to `QUALIFY_PATH` (shipped with the package), which `compare` and the bench tables read to warn on sets
where no transfer result is informative.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import DATA_DIR
from ..models import builtin
from .control import null_band
from .metrics import summarize

QUALIFY_PATH = DATA_DIR / "qualify.json"
NOT_QUALIFIED = "prompting does not move this set on this model: no transfer result here is informative"
INSIDE_NULL = ("prompting moves this set on this model, but no further than a random direction of the same KL can: "
               "a transfer result here must clear the random null, not 0")
MIN_NULL = 3  # random seeds before a prediction band is drawn
NOT_MEASURED = "prompting's effect on this set was never measured on this model (bench/qualify.py): read transfer results with care"


def prompt_gate(table: pd.DataFrame, dim: str, null_effects: list[float] | None = None, n_boot: int = 1000,
                seed: int = 0) -> dict[str, Any]:
    """The gate's record for one prompting score table (coefficients −1, 0, +1): its side-balanced effect with CI
    and p, action bias, the answer mass at c = 0, the random null's 95 % prediction band (when given) and
    `qualifies` = the effect's CI is above 0; `above_null` = the effect is above that band (None below MIN_NULL seeds)."""
    s = summarize(table, dim, n_boot=n_boot, seed=seed)
    band = null_band(null_effects or [])
    c0 = table.loc[table["coeff"] == 0.0, "pmass"]
    return {"effect": s["effect"], "ci_low": s["ci_low"], "ci_high": s["ci_high"], "p": s["p"],
            "action_bias": s.get("action_bias"), "pmass_c0": float(c0.median()) if len(c0) else np.nan,
            "n_dilemmas": int(s["n_dilemmas"]), "null_lo": band["null_lo"], "null_hi": band["null_hi"],
            "null_n": band["null_n"], "qualifies": bool(np.isfinite(s["ci_low"]) and s["ci_low"] > 0),
            "above_null": bool(s["effect"] > band["null_hi"]) if band["null_n"] >= MIN_NULL else None}


def _entry(model: str, dataset: str, path: Path) -> dict[str, Any] | None:
    """The recorded gate entry of (model, dataset), a built-in model under any of its names; None if absent."""
    path = path or QUALIFY_PATH  # read at call time, so a test can point it elsewhere
    if not path.is_file():
        return None
    spec = builtin(model)
    return json.loads(path.read_text()).get(spec.name if spec else model, {}).get(dataset)


def qualification(model: str, dataset: str, path: Path | None = None) -> bool | None:
    """The recorded verdict for (model, dataset): True / False, None when it was never measured."""
    entry = _entry(model, dataset, path)
    return None if entry is None else bool(entry["qualifies"])


def chosen_variant(model: str, dataset: str, path: Path | None = None) -> str | None:
    """The prompting variant chosen on `dataset`'s tuning half for `model` (the strongest there), None if unmeasured."""
    entry = _entry(model, dataset, path)
    return None if entry is None else entry.get("variant")


def gate_warnings(model: str, datasets: list[str], path: Path | None = None) -> list[str]:
    """One line per dataset that has not qualified on `model` (or was never measured there), or whose prompting
    effect is inside the random null."""
    out = []
    for ds in datasets:
        verdict = qualification(model, ds, path)
        if verdict is not True:
            out.append(f"warning: {model} / {ds}: {NOT_QUALIFIED if verdict is False else NOT_MEASURED}")
        elif (_entry(model, ds, path) or {}).get("above_null") is False:
            out.append(f"warning: {model} / {ds}: {INSIDE_NULL}")
    return out
