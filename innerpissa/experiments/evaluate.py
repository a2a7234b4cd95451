"""Evaluate one steerer on binary-choice datasets and write a self-describing run directory.

out_dir/
  config.json          model id + state hash, steerer params, coeffs, seed, data hashes and counts,
                       code version / git commit / source hash, package versions
  scores.parquet       the per-row ScoreTable of every dataset (see `innerpissa.eval.score`)
  effects.parquet      per dataset x label dim: effect, CI, t, p, BH q (see `effects_by_dim`)
  summary.json         {dataset: headline metrics (see `summarize`) + n_train_overlap, n_truncated}
  dose_response.png    per dataset: signed log-ratio (95% CI) and ΔNLL vs c
Every file is written atomically (temp file + rename), config.json last.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import platform
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .. import __version__
from ..concepts import ContrastPairs
from ..eval.calibrate import Calibration, CalibratedSteerer
from ..eval.datasets import EvalSet, limit_rows, load_dataset
from ..eval.metrics import audit, dose_response, effects_by_dim, selectivity, summarize
from ..eval.overlap import train_overlap
from ..eval.score import NLL_STRIDE, describe, score
from ..io import atomic_write, atomic_write_json, json_safe
from ..models import model_id, tensors_sha256
from ..precision import resolve as resolve_precision
from ..steerers import Steerer

PACKAGES = ("torch", "transformers", "numpy", "pandas", "scipy", "statsmodels", "peft")
OVERLAP_NGRAM = 8


def model_state_sha256(model: PreTrainedModel, n: int = 16) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes), adapters included."""
    return tensors_sha256(sorted(model.state_dict().items()))[:n]


@functools.cache
def code_version() -> dict[str, Any]:
    """Package version, sha256 of its .py sources, and the git commit / dirty flag when in a checkout; taken once,
    at import (below), so a long bench records the code it runs even when the files are edited meanwhile."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    out: dict[str, Any] = {"version": __version__, "source_sha256": h.hexdigest()[:16], "git_commit": None, "git_dirty": None}
    try:
        git = ["git", "-C", str(root.parent)]
        out["git_commit"] = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        status = subprocess.run([*git, "status", "--porcelain", "--", str(root)], capture_output=True, text=True, check=True)
        out["git_dirty"] = bool(status.stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        pass  # not a git checkout (installed package): the source hash still identifies the code
    return out


code_version()


def versions() -> dict[str, str | None]:
    """Python and key package versions."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def plot_dose_response(curves: dict[str, pd.DataFrame], targets: dict[str, str]) -> Figure:
    """One row per dataset: signed log-ratio with 95% CI vs c (left), ΔNLL vs c (right)."""
    fig = Figure(figsize=(9, 3.2 * len(curves)))
    axes = fig.subplots(len(curves), 2, squeeze=False)
    for (name, dr), (ax1, ax2) in zip(curves.items(), axes):
        yerr = [dr["signed_mean"] - dr["ci_low"], dr["ci_high"] - dr["signed_mean"]]
        ax1.errorbar(dr["coeff"], dr["signed_mean"], yerr=yerr, marker="o", capsize=3)
        ax1.axhline(0, color="grey", lw=0.5)
        ax1.set(title=f"{name}: {targets[name]}", xlabel="coefficient c", ylabel="label-signed log-ratio (nats)")
        ax2.plot(dr["coeff"], dr["dnll"], marker="o", color="C3")
        ax2.axhline(0, color="grey", lw=0.5)
        ax2.set(title=f"{name}: degradation", xlabel="coefficient c", ylabel="ΔNLL vs c = 0 (nats/token)")
    fig.tight_layout()
    return fig


def evaluate_run(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    steerer: Steerer,
    datasets: Sequence[str | EvalSet],
    coeffs: Sequence[float],
    out_dir: str | Path,
    seed: int = 0,
    train_pairs: ContrastPairs | None = None,
    batch_size: int = 16,
    max_length: int | None = 512,
    limit: int | None = None,
    n_boot: int = 1000,
    pmass_min: float = 0.1,
    progress: bool = True,
    calibration: Calibration | None = None,
    precision: str = "auto",
) -> dict[str, dict[str, Any]]:
    """Score `steerer` on each dataset at `coeffs`, write the run directory, and return summary.json's content.

    `train_pairs` (the pairs the steerer was fitted on) enable the leakage check; without them
    n_train_overlap is null. `limit` keeps at most that many rows per dataset (whole dilemmas, seeded).
    `calibration` (see `eval.calibrate`) adds its budget, both coefficients and their measured KL to every
    summary and to config.json; a `CalibratedSteerer`'s own coefficients go to scores.parquet as `raw_coeff`.
    """
    if not datasets:
        raise ValueError("no datasets to evaluate: pass at least one, e.g. dd-honesty")
    coeffs = [float(c) for c in coeffs]
    if len(set(coeffs)) != len(coeffs):
        raise ValueError(f"duplicate coefficients in {coeffs}")
    sets = [d if isinstance(d, EvalSet) else load_dataset(d, seed=seed) for d in datasets]
    if limit is not None:
        sets = [limit_rows(es, limit, seed) for es in sets]
    if len({es.name for es in sets}) != len(sets):
        raise ValueError(f"two datasets share a name ({[es.name for es in sets]}): evaluate them in separate runs")
    out_dir = Path(out_dir)
    tables, effects, curves, summary, seconds = [], [], {}, {}, {}
    for es in sets:
        t0 = time.perf_counter()
        table = score(model, tok, steerer, es, coeffs, batch_size, max_length, pmass_min, seed, progress, precision)
        seconds[es.name] = round(time.perf_counter() - t0, 2)  # every coefficient's pass, c = 0 from cache or not
        if isinstance(steerer, CalibratedSteerer):
            table["raw_coeff"] = table["coeff"].map(steerer.raw)
        eff = effects_by_dim(table, n_boot, seed)
        summary[es.name] = {
            **summarize(table, es.target_dim, n_boot, seed, effects=eff),
            **{k: v for k, v in describe(table).items() if k != "n_nan"},
            "n_questions": len(es),
            "n_train_overlap": len(train_overlap(es, train_pairs, OVERLAP_NGRAM)) if train_pairs is not None else None,
            **(calibration.summary() if calibration is not None else {}),
            "selectivity": selectivity(eff, es.target_dim),
            **audit(table, es.target_dim),  # the references' metrics, for docs/metrics_audit.md
        }
        tables.append(table)
        effects.append(eff.assign(dataset=es.name))
        curves[es.name] = dose_response(table, es.target_dim, n_boot, seed)
    summary = json_safe(summary)
    scores = pd.concat(tables, ignore_index=True)
    atomic_write(out_dir / "scores.parquet", lambda tmp: scores.to_parquet(tmp, index=False))
    eff_all = pd.concat(effects, ignore_index=True)
    atomic_write(out_dir / "effects.parquet", lambda tmp: eff_all.to_parquet(tmp, index=False))
    fig = plot_dose_response(curves, {es.name: es.target_dim for es in sets})
    atomic_write(out_dir / "dose_response.png", lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    atomic_write_json(out_dir / "summary.json", summary)
    atomic_write_json(out_dir / "config.json", json_safe({
        "model": model_id(model), "model_state_sha256": model_state_sha256(model),
        "steerer": {"method": steerer.name, "params": steerer.params()},
        "coeffs": coeffs, "seed": seed, "batch_size": batch_size, "max_length": max_length, "limit": limit,
        "pmass_min": pmass_min, "n_boot": n_boot, "nll_stride": NLL_STRIDE, "nll_offset": "row-hash",
        "prefix": "shared per dilemma (KV cache)",
        "precision": {"requested": precision, "resolved": resolve_precision(precision, model.device)},
        "calibration": calibration.to_json() if calibration is not None else None,
        "overlap": {"checked": train_pairs is not None, "ngram": OVERLAP_NGRAM,
                    "n_train_pairs": len(train_pairs) if train_pairs is not None else None},
        "datasets": {es.name: {"hash": es.content_hash(), "target_dim": es.target_dim, "n_rows": len(es), "info": es.info,
                               "score_seconds": seconds[es.name]} for es in sets},
        "code": dict(code_version()), "versions": versions(),
    }))
    return summary
