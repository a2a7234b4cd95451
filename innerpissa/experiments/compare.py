"""`innerpissa compare`: every method × seed fit on the same pairs and scored on the same rows and coefficients,
then Table 1 (mean ± 95% CI over seeds), a bar chart and the "against the grain" table (c = −1 vs the
dishonest prompt). Runs go through the sweep machinery, so fits are cached by hash and a rerun skips done work.

Everything method-specific comes from the method's class (`steerers.base.SteererBase`): deterministic methods
(`seed_param` None) run once (seed 0) and are marked "1 seed" in the table: repeating them would add identical runs
and a fake zero-width CI. A method with `discrete_coeffs` (prompting: on or off) runs at the requested coefficients
that fall in that set. Method names may be aliases a method declares (a method plus params: prompting's variants,
InnerPiSSA under each recipe). A plain method name gets `tuned_params` with the prompting gate's choice on the
model's tuning half as its callback (`eval.gate.chosen_variant`, measured by `bench/qualify.py`), so prompting
runs the strongest variant measured there without the steerers ever reading the evaluation layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .. import steerers
from ..config import set_path
from ..io import atomic_write_json
from ..eval.gate import chosen_variant
from .run import RunConfig
from .sweep import SweepSummary, make_config, run_inprocess, run_ray

QUICK = {"seeds": 1, "eval_limit": 24, "steps": 20, "n_pairs": 128, "datasets": "dd-honesty"}  # --quick defaults


def compare_configs(methods: list[str], seeds: int, model: str, concept: str, datasets: list[str],
                    coeffs: list[float], eval_limit: int | None = None, eval_part: str = "report",
                    steps: int | None = None, samples: int = 0, pmass_min: float = 0.1,
                    n_pairs: int | None = None, kl: Sequence[float] | None = None,
                    kl_stat: str = "mean", precision: str = "auto") -> list[RunConfig]:
    """One RunConfig per (method, seed[, KL budget]); `steps` sets the optimizer steps of the trained methods (each
    method's `overrides` say where), `n_pairs` caps the training pairs of every method (one shared subset). With `kl`
    budgets, each run is scored in budget units (c = ±1: the per-sign coefficient at which KL(base || steered) = the
    budget; see `eval.calibrate`). `precision` other than auto sets the evaluation precision and the training
    precision of the methods that train with one."""
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    known, aliases = steerers.available(), steerers.aliases()
    unknown = [m for m in methods if m not in known and m not in aliases]
    if unknown or not methods:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(known + list(aliases))}")
    cfgs = []
    for name in methods:
        method, params = aliases.get(name, (name, {}))
        cls = steerers.steerer_class(method)
        if name == method:  # a plain name: the variant the gate chose on this model's tuning half, where it tunes one
            params = cls.tuned_params(params, lambda: chosen_variant(
                model, next((d for d in datasets if d.startswith("dd-")), datasets[0])))
        for setting, value in (("steps", steps), ("precision", None if precision == "auto" else precision)):
            if value is not None and setting in cls.overrides:
                params = set_path(params, cls.overrides[setting], value)
        base = make_config({"model": model, "concept": concept, "method": method, "params": params,
                            "datasets": datasets, "coeffs": coeffs, "eval_limit": eval_limit,
                            "eval_part": eval_part, "samples": samples, "pmass_min": pmass_min,
                            "n_pairs": n_pairs, "precision": precision})
        if cls.discrete_coeffs is not None:
            base = make_config({**base.model_dump(), "coeffs": [c for c in base.coeffs if c in cls.discrete_coeffs]})
        variants = [base] if not kl else [make_config({**base.model_dump(), "kl": b, "kl_stat": kl_stat}) for b in kl]
        for seed in range(seeds) if base.seeded() else [0]:
            cfgs += [v.model_copy(update={"seed": seed}) for v in variants]
    return cfgs


@dataclass
class CompareResult:
    """Display tables (Table 1 per dataset, against the grain) and the sweep summary."""

    table1: dict[str, pd.DataFrame]
    against_the_grain: pd.DataFrame | None
    summary: SweepSummary
    against_the_grain_error: str | None = None


def run_compare(cfgs: list[RunConfig], root: Path, out: Path, use_ray: bool = False,
                address: str | None = None) -> CompareResult:
    """Run (or resume) the comparison runs, then write Table 1 (md/csv/tex + PNG) per dataset to `out`."""
    from .collect import collect, kl_budget, load_scores
    from .figures import bar_chart
    from .tables import against_the_grain, table1, write_table

    summary = run_ray(cfgs, root, address=address) if use_ray else run_inprocess(cfgs, root)
    hashes = {c.content_hash() for c in cfgs} - set(summary.failed)
    if not hashes:
        raise ValueError(f"every compare run failed ({len(summary.failed)}); see error.json in {Path(root) / 'runs'}")
    collected = collect(root)
    collected = collected[collected["run_hash"].isin(hashes)]
    all_scores = load_scores(root, sorted(hashes))
    out = Path(out)
    tables, atgs, atg_error = {}, [], None
    for kl in dict.fromkeys(c.kl for c in cfgs):  # one set of tables per KL budget (None: raw coefficients)
        runs = collected[kl_budget(collected) == kl] if kl is not None else collected[kl_budget(collected).isna()]
        tag = "" if kl is None else f"_kl{kl:g}"
        for ds in dict.fromkeys(d for c in cfgs for d in c.datasets):
            tables[ds + tag] = table1(runs, ds)
            write_table(tables[ds + tag], out / f"table1_{ds}{tag}")
            bar_chart(tables[ds + tag], out / f"table1_{ds}{tag}.png")
        try:
            atg = against_the_grain(runs, all_scores[all_scores["run_hash"].isin(runs["run_hash"])])
            write_table(atg, out / f"against_the_grain{tag}")
            shown = atg.assign(**({"KL budget": kl} if kl is not None else {}))
            shown.attrs = {}  # the numbers are in the per-budget CSVs; pandas cannot concat frames with attrs
            atgs.append(shown)
        except ValueError as e:  # e.g. no c = -1 in the coefficients, or no valid log-ratios there
            atg_error = str(e)
    atg = pd.concat(atgs, ignore_index=True) if atgs else None
    atomic_write_json(out / "compare.json", {
        "root": str(root), "runs": {c.content_hash(): c.model_dump(mode="json") for c in cfgs},
        "against_the_grain_error": atg_error, **summary.to_json(),
    })
    return CompareResult(tables, atg, summary, atg_error)
