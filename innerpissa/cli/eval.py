"""CLI command `innerpissa eval` (registered on the app by importing this module)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import typer
from rich.table import Table

from ..concepts import ContrastPairs, load_concept
from ..concepts.fit_data import PAIRS_FILE, fit_pairs, joined, seen_pairs
from ..io import read_json
from ..precision import HELP as PRECISION_HELP, check as check_precision
from .app import app, check_coeffs, check_out, console, loading, warn


def _fmt(x: Any, spec: str = ".3g") -> str:
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, spec)


def effects_table(name: str, effects: pd.DataFrame, target: str, top: int = 10) -> Table:
    """The target dim and the `top` other dims by p: effect, 95% CI, p, BH q, dilemmas."""
    t = Table(title=f"{name}: effect per dim (slope of label-signed log-ratio per unit c)")
    for col in ("dim", "effect", "95% CI", "p", "q (BH)", "dilemmas"):
        t.add_column(col, justify="left" if col == "dim" else "right")
    others = effects[effects["dim"] != target].sort_values("p", na_position="last").head(top)
    for i, r in enumerate(pd.concat([effects[effects["dim"] == target], others]).itertuples()):
        style = "bold" if i == 0 else ("green" if r.significant else None)
        t.add_row(r.dim + (" (target)" if i == 0 else ""), _fmt(r.effect), f"[{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]",
                  _fmt(r.p, ".2g"), _fmt(r.q, ".2g"), str(r.n_dilemmas), style=style)
    return t


def headline_table(summary: dict[str, dict[str, Any]]) -> Table:
    """One row per dataset: ΔNLL, Gain, coherent range, Yes-bias controls, flips, NaNs, overlap."""
    t = Table(title="headline (|c| = 1; yes-bias controls on label-balanced dilemmas)")
    for col in ("dataset", "effect [CI]", "p", "ΔNLL", "Gain", "coherent |c|", "yes-bias-controlled", "raw shift",
                "flips +1 fix/break", "flips −1 flip/counter", "NaN", "overlap", "c +/− (KL +/−)"):
        t.add_column(col, justify="right")
    for name, s in summary.items():
        t.add_row(
            name, f"{_fmt(s['effect'])} [{_fmt(s['ci_low'])}, {_fmt(s['ci_high'])}]", _fmt(s["p"], ".2g"),
            _fmt(s["dnll"]), _fmt(s["gain"], ".1f"), _fmt(s["coherent_range"], "g"),
            f"{_fmt(s['yesbias_effect'])} (p={_fmt(s['yesbias_p'], '.2g')})",
            f"{_fmt(s['raw_shift'])} (p={_fmt(s['raw_shift_p'], '.2g')})",
            f"{s['flips_forward_fixed']}/{s['flips_forward_broken']}", f"{s['flips_reverse_flipped']}/{s['flips_reverse_counter']}",
            f"{s['n_nan']}/{s['n_scored']}", "not checked" if s["n_train_overlap"] is None else str(s["n_train_overlap"]),
            f"{_fmt(s.get('coeff_pos'))}/{_fmt(s.get('coeff_neg'))} ({_fmt(s.get('kl_pos'))}/{_fmt(s.get('kl_neg'))})",
        )
    return t


COHERENT = "the prompt NLL rises by at most 0.5 nats over c = 0 and P(Yes) + P(No) stays >= 0.5"


def incoherent_coeffs(summary: dict[str, dict[str, Any]], coeffs: list[float], units: str = "") -> list[str]:
    """Warnings for coefficients past the coherent range each dataset's run measured (`metrics.coherent_range`:
    ΔNLL <= 0.5 nats and answer mass >= 0.5 at every |c'| up to it): their effects describe a broken model. Each
    says in its own line what the range means, and a range of 0 says that already the smallest |c| broke it."""
    out = []
    for name, s in summary.items():
        cr = s.get("coherent_range")
        far = [c for c in coeffs if cr is not None and np.isfinite(cr) and abs(c) > cr]
        cs = " ".join(f"{c:g}" for c in far)
        if far and cr == 0:
            out.append(f"{name}: no scored coefficient but 0 is coherent (the coherent range, where {COHERENT}, is "
                       f"|c| <= 0{units}): already at |c| = {min(abs(c) for c in far):g} one of the two fails, so "
                       f"the effects at --coeffs {cs} describe a degraded model; try smaller coefficients")
        elif far:
            out.append(f"{name}: --coeffs {cs} past the measured coherent range |c| <= {cr:g}{units} (up to there "
                       f"{COHERENT}); their effects describe a degraded model, read them with care")
    return out


def fitted_pairs(adapter: Path, concept: str | None) -> tuple[ContrastPairs | None, str]:
    """(every pair the steerer in `adapter` was fitted on, or None; a warning or ""), for the leakage check.

    Its pairs.json record (written by `innerpissa train` and sweeps) is rebuilt and hash-checked; a steerer saved
    without one is checked against `concept`'s pairs from `fit_pairs`, which may not be the ones it saw."""
    if (adapter / PAIRS_FILE).is_file():
        return seen_pairs(read_json(adapter / PAIRS_FILE)), ""
    if concept:
        return joined(*fit_pairs(concept)), (f"{adapter} has no {PAIRS_FILE}: leakage checked against concept "
                                             f"{concept!r}'s pairs, which may not be the ones it was fitted on")
    return None, "leakage check skipped: steerer.json names no concept and there is no pairs.json; pass --concept"


@app.command("eval")
def eval_command(
    adapter: Path = typer.Option(..., help="saved steerer directory (with steerer.json), e.g. from `innerpissa train`"),
    dataset: list[str] = typer.Option(["dd-honesty"], help="dd-honesty, dd-all, dd-sample-N, truthfulqa, truthfulqa-sample-N or a .jsonl/.csv (repeatable)"),
    coeffs: list[float] = typer.Option(None, help="steering coefficients, e.g. --coeffs -2 -1 0 1 2 (default -1 0 1)"),
    out: Path | None = typer.Option(None, help="run directory to write (default runs/eval/<adapter name>)"),
    limit: int | None = typer.Option(None, min=1, help="at most N rows per dataset (whole dilemmas, seeded)"),
    model: str | None = typer.Option(None, help="base model spec (default: the `model` recorded in steerer.json)"),
    concept: str | None = typer.Option(None, help="concept the steerer was trained on, for the leakage check (default: from steerer.json)"),
    batch_size: int = typer.Option(16, min=1),
    max_length: int = typer.Option(512, min=8, help="prompts are left-truncated to this many tokens"),
    seed: int = typer.Option(0, min=0, max=2**32 - 1, help="seed for sampling, limits and the bootstrap"),
    n_boot: int = typer.Option(1000, min=10, help="bootstrap resamples of dilemmas"),
    precision: str = typer.Option("auto", help=PRECISION_HELP),
    overwrite: bool = typer.Option(False, help="replace an existing OUT run directory"),
    kl: float | None = typer.Option(None, help="KL budget (nats/token): --coeffs become budget "
                                    "units, ±1 = the per-sign c at which KL(base || steered) on neutral prompts equals it"),
    kl_stat: str = typer.Option("mean", help="per-token KL statistic of the budget: mean | p95"),
) -> None:
    """Score a saved steerer on binary-choice datasets at several coefficients; print and save the results."""
    from ..eval.calibrate import CalibratedSteerer, calibrate, check_stat
    from ..eval.datasets import load_dataset
    from ..io import atomic_dir
    from ..models import load_model
    from ..steerers import load_steerer
    from ..experiments.evaluate import evaluate_run

    cs = check_coeffs(coeffs, need_zero=True)
    check_precision(precision)
    check_stat(kl_stat)  # a bad --kl / --kl-stat fails before the model loads
    if kl is not None and not 0 < kl < float("inf"):
        raise ValueError(f"--kl must be a positive number of nats per token (e.g. --kl 0.1), got {kl}")
    out = out or Path("runs") / "eval" / adapter.resolve().name
    check_out(out, overwrite)
    if concept is not None:
        load_concept(concept)  # a typo fails here even where pairs.json makes the leakage check ignore it
    names = [n.strip() for d in dataset for n in d.split(",") if n.strip()]
    if not names:
        raise ValueError("--dataset is empty: name at least one, e.g. --dataset dd-honesty")
    sets = [load_dataset(n, seed=seed) for n in names]  # fail fast on bad names/files, before loading a model
    meta = adapter / "steerer.json"
    if not meta.is_file():
        raise FileNotFoundError(f"{adapter} is not a saved steerer (no steerer.json); pass a directory written by train")
    params = read_json(meta).get("params", {})
    spec = model or params.get("model")
    if not spec:
        raise ValueError(f"{meta} records no base model: pass --model")
    train, pairs_note = fitted_pairs(adapter, concept or params.get("concept"))
    with loading(spec):
        m, tok = load_model(spec)
    steerer = load_steerer(m, adapter)
    calibration = calibrate(m, tok, steerer, kl, kl_stat)  # kl None: the KL at raw c = ±1, for the record
    if kl is not None:
        steerer = CalibratedSteerer(steerer, calibration)
    with atomic_dir(out) as tmp:
        summary = evaluate_run(m, tok, steerer, sets, cs, tmp, seed=seed, train_pairs=train, batch_size=batch_size,
                               max_length=max_length, limit=limit, n_boot=n_boot, calibration=calibration,
                               precision=precision)
        effects = pd.read_parquet(tmp / "effects.parquet")
    cons = console()
    for name, s in summary.items():
        cons.print(effects_table(name, effects[effects["dataset"] == name], s["target_dim"]))
    cons.print(headline_table(summary))
    for message in incoherent_coeffs(summary, cs, f" KL-budget units (±1 = KL {kl:g})" if kl is not None else ""):
        warn(message)
    if pairs_note:
        cons.print(f"[yellow]{pairs_note}[/yellow]")
    cons.print(f"wrote {out}/ (config.json, scores.parquet, effects.parquet, summary.json, dose_response.png)")
