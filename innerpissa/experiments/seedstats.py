"""Across-seed statistics for the report: mean with a t-interval over seeds, or the within-run interval when
there is no seed variance (one seed, or a deterministic method whose seeds agree exactly), and seed-level
differences between two configurations ("drop vs full")."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

LEVEL = 0.95
_Z = stats.norm.ppf(0.5 + LEVEL / 2)

# within-run interval/test columns of summary.json for a metric (default: "<metric>_ci_low", ...)
WITHIN_KEYS = {
    "effect": ("ci_low", "ci_high", "t", "p"),
    "yesbias_effect": ("yesbias_ci_low", "yesbias_ci_high", "yesbias_t", "yesbias_p"),
    "control_score": ("control_ci_low", "control_ci_high", "control_t", "control_p"),
}


def within_keys(metric: str) -> tuple[str, str, str, str]:
    """Names of the within-run (lo, hi, t, p) summary columns of `metric`."""
    return WITHIN_KEYS.get(metric, (f"{metric}_ci_low", f"{metric}_ci_high", f"{metric}_t", f"{metric}_p"))


def _col(runs: pd.DataFrame, key: str) -> np.ndarray:
    return pd.to_numeric(runs[key], errors="coerce").to_numpy(float) if key in runs else np.full(len(runs), np.nan)


def has_seed_variance(values: np.ndarray) -> bool:
    """True when ≥ 2 finite values that are not all equal (a t-interval over seeds is defined)."""
    v = values[np.isfinite(values)]
    return len(v) >= 2 and np.ptp(v) > 0


def seed_aggregate(runs: pd.DataFrame, metric: str) -> dict:
    """Mean of `metric` over runs (one per seed) with its 95% CI, t and p, and the CI's basis.

    basis 'seeds': one-sample t over seeds; '1 seed' / 'identical over n seeds' (e.g. a deterministic
    method): the first run's own interval and test from summary.json (NaN when it reports none);
    'none': no finite value."""
    lo_k, hi_k, t_k, p_k = within_keys(metric)
    v = _col(runs, metric)
    keep = np.isfinite(v)
    v, n = v[keep], int(keep.sum())
    if n == 0:
        return {"mean": np.nan, "lo": np.nan, "hi": np.nan, "t": np.nan, "p": np.nan, "n": 0, "basis": "none"}
    if has_seed_variance(v):
        test = stats.ttest_1samp(v, 0.0)
        ci = test.confidence_interval(LEVEL)
        return {"mean": v.mean(), "lo": ci.low, "hi": ci.high, "t": test.statistic, "p": test.pvalue, "n": n, "basis": "seeds"}
    first = {k: _col(runs, k)[keep][0] for k in (lo_k, hi_k, t_k, p_k)}
    return {"mean": v[0], "lo": first[lo_k], "hi": first[hi_k], "t": first[t_k], "p": first[p_k], "n": n,
            "basis": "1 seed" if n == 1 else f"identical over {n} seeds"}


def _within_se(runs: pd.DataFrame, metric: str) -> float:
    lo_k, hi_k, _, _ = within_keys(metric)
    return float(np.nanmean(_col(runs, hi_k) - _col(runs, lo_k)) / (2 * _Z)) if len(runs) else np.nan


def drop(ref: pd.DataFrame, other: pd.DataFrame, metric: str) -> dict:
    """ref − other of the seed means of `metric` with a 95% CI and p.

    Both with seed variance: Welch t. One side without (e.g. an ablation run with 1 seed): a t-interval
    using the other side's seed variance for both (assumes equal seed variance). Neither: a normal interval
    from the runs' own within-run CIs when both report one, else no interval."""
    a, b = _col(ref, metric), _col(other, metric)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    out = {"mean": np.nan, "lo": np.nan, "hi": np.nan, "p": np.nan, "basis": "none"}
    if not len(a) or not len(b):
        return out
    d = a.mean() - b.mean()
    out["mean"] = d
    va, vb = has_seed_variance(a), has_seed_variance(b)
    if va and vb:
        test = stats.ttest_ind(a, b, equal_var=False)
        ci = test.confidence_interval(LEVEL)
        return {**out, "lo": ci.low, "hi": ci.high, "p": test.pvalue, "basis": "Welch over seeds"}
    if va or vb:
        s, dof = (a.std(ddof=1), len(a) - 1) if va else (b.std(ddof=1), len(b) - 1)
        se, dist = s * np.sqrt(1 / len(a) + 1 / len(b)), stats.t(dof)
        basis = "seed variance of " + ("reference" if va else "ablation")
    else:
        se, dist, basis = float(np.hypot(_within_se(ref, metric), _within_se(other, metric))), stats.norm(), "within-run CIs"
        if not np.isfinite(se):
            return {**out, "basis": "no CI (no seed variance)"}
    q = dist.ppf(0.5 + LEVEL / 2)
    p = 2 * dist.sf(abs(d) / se) if se > 0 else np.nan
    return {**out, "lo": d - q * se, "hi": d + q * se, "p": p, "basis": basis}
