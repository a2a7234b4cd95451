"""Metrics: pure functions of one ScoreTable slice (one method, seed and dataset; see `score.score`).

The effect on a dim is the OLS slope of the label-signed log-ratio y = label * logratio on the coefficient
c (nats per unit c), pooled over questions. The two actions of a dilemma (or orders of a question) are not
independent, so uncertainty comes from a bootstrap that resamples dilemmas (`dilemma_id`) with
replacement: se = SD of the bootstrap slopes, CI = their 2.5/97.5 percentiles, t = effect / se,
p = two-sided from Student t with (n_dilemmas - 1) df. Rows with NaN log-ratio (low pmass) are dropped.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

from .datasets import LABEL

EFFECT_COLUMNS = ["dim", "effect", "se", "t", "p", "ci_low", "ci_high", "spearman", "n_rows", "n_dilemmas", "q", "significant"]


def _check_slice(table: pd.DataFrame) -> None:
    keys = [k for k in ("method", "seed", "dataset") if k in table]
    if keys and len(table[keys].drop_duplicates()) > 1:
        raise ValueError(f"the table mixes several {'/'.join(keys)}: pass one slice (filter with table[table.dataset == ...])")
    if table.empty:
        raise ValueError("the score table is empty: nothing to summarise")


def _label_col(table: pd.DataFrame, dim: str) -> str:
    col = f"{LABEL}{dim}"
    if col not in table:
        have = [c[len(LABEL):] for c in table.columns if c.startswith(LABEL)]
        raise ValueError(f"no label column for dim {dim!r}; the table has {have[:8]}{'...' if len(have) > 8 else ''}")
    return col


def signed(table: pd.DataFrame, dim: str) -> pd.DataFrame:
    """Rows labelled for `dim` with a finite log-ratio: row_id, dilemma_id, coeff, label, logratio, y."""
    col = _label_col(table, dim)
    keep = table[col].notna() & np.isfinite(table["logratio"])
    out = table.loc[keep, ["row_id", "dilemma_id", "coeff", "logratio", col]].rename(columns={col: "label"})
    return out.assign(y=out["label"] * out["logratio"])


def _slope(tot: np.ndarray) -> np.ndarray:
    """OLS slope from summed [n, Σx, Σy, Σxx, Σxy] (last axis)."""
    n, sx, sy, sxx, sxy = np.moveaxis(tot, -1, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sxy - sx * sy / n) / (sxx - sx * sx / n)


def slope_test(x: np.ndarray, y: np.ndarray, groups: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """Slope of y on x with a cluster bootstrap over `groups`: effect, se, t, p, ci_low, ci_high, n_dilemmas."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    codes, uniq = pd.factorize(np.asarray(groups))
    G = len(uniq)
    per = np.zeros((G, 5))
    np.add.at(per, codes, np.stack([np.ones_like(x), x, y, x * x, x * y], 1))
    out = {"effect": float(_slope(per.sum(0))), "se": np.nan, "t": np.nan, "p": np.nan,
           "ci_low": np.nan, "ci_high": np.nan, "n_dilemmas": G}
    if G < 2 or not np.isfinite(out["effect"]):
        return out
    counts = np.random.default_rng(seed).multinomial(G, np.full(G, 1.0 / G), size=n_boot)
    boot = _slope(counts @ per)
    boot = boot[np.isfinite(boot)]  # a resample can put every row at one x (undefined slope)
    se = float(boot.std(ddof=1)) if len(boot) > 1 else np.nan
    t = out["effect"] / se if se > 0 else np.nan
    out.update(se=se, t=t, p=float(2 * stats.t.sf(abs(t), G - 1)) if np.isfinite(t) else np.nan,
               ci_low=float(np.percentile(boot, 2.5)), ci_high=float(np.percentile(boot, 97.5)))
    return out


def monotonicity(coeff: pd.Series, y: pd.Series) -> float:
    """Spearman rho between c and the mean of y at each c (1 = monotone dose-response); NaN below 3 c or if flat."""
    means = y.groupby(coeff).mean()
    if len(means) < 3 or means.nunique() < 2:
        return np.nan
    return float(stats.spearmanr(means.index, means.to_numpy()).statistic)


def effects_by_dim(
    table: pd.DataFrame, n_boot: int = 1000, seed: int = 0, min_dilemmas: int = 5, alpha: float = 0.05
) -> pd.DataFrame:
    """Per label dim: slope of the signed log-ratio on c with bootstrap se/CI, t, p, Spearman and BH-FDR q.

    Dims with fewer than `min_dilemmas` labelled dilemmas get NaN statistics and stay out of the FDR family;
    `significant` is q < alpha."""
    _check_slice(table)
    rows = []
    for col in (c for c in table.columns if c.startswith(LABEL)):
        dim = col[len(LABEL):]
        s = signed(table, dim)
        res: dict[str, Any] = {"dim": dim, "n_rows": s["row_id"].nunique(), "n_dilemmas": s["dilemma_id"].nunique()}
        if res["n_dilemmas"] >= max(min_dilemmas, 2) and s["coeff"].nunique() >= 2:
            res.update(slope_test(s["coeff"], s["y"], s["dilemma_id"], n_boot, seed))
            res["spearman"] = monotonicity(s["coeff"], s["y"])
        rows.append(res)
    out = pd.DataFrame(rows).reindex(columns=EFFECT_COLUMNS)
    ok = out["p"].notna()
    out["q"] = np.nan
    if ok.any():
        out.loc[ok, "q"] = multipletests(out.loc[ok, "p"], method="fdr_bh")[1]
    out["significant"] = out["q"] < alpha
    return out


def _wide(table: pd.DataFrame, col: str) -> pd.DataFrame:
    return table.pivot_table(index="row_id", columns="coeff", values=col, aggfunc="first", dropna=False)


def dnll_at(table: pd.DataFrame, c: float) -> float:
    """Mean over questions of NLL(c) - NLL(0), paired by row; NaN if c or 0 was not scored."""
    nll = _wide(table, "nll")
    if c not in nll or 0.0 not in nll:
        return np.nan
    return float((nll[c] - nll[0.0]).mean())


def dose_response(table: pd.DataFrame, target_dim: str, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per coefficient: mean signed log-ratio with a dilemma-bootstrap 95% CI, ΔNLL vs c = 0, mean pmass, n."""
    _check_slice(table)
    s = signed(table, target_dim)
    rng = np.random.default_rng(seed)
    rows = []
    for c, g in s.groupby("coeff"):
        per = g.groupby("dilemma_id")["y"].agg(["sum", "count"]).to_numpy()
        counts = rng.multinomial(len(per), np.full(len(per), 1.0 / len(per)), size=n_boot)
        boot = (counts @ per[:, 0]) / (counts @ per[:, 1])
        rows.append({"coeff": c, "signed_mean": g["y"].mean(), "ci_low": np.percentile(boot, 2.5),
                     "ci_high": np.percentile(boot, 97.5), "n": len(g)})
    out = pd.DataFrame(rows, columns=["coeff", "signed_mean", "ci_low", "ci_high", "n"])
    levels = sorted(table["coeff"].unique())
    extra = pd.DataFrame({"coeff": levels, "dnll": [dnll_at(table, c) for c in levels],
                          "pmass": [table.loc[table["coeff"] == c, "pmass"].mean() for c in levels]})
    return extra.merge(out, on="coeff", how="left")[["coeff", "signed_mean", "ci_low", "ci_high", "dnll", "pmass", "n"]]


def _flips(s: pd.DataFrame, c: float) -> tuple[int, int]:
    """(rows correct at 0 and wrong at c, rows wrong at 0 and correct at c); correct = y > 0."""
    y = s.pivot_table(index="row_id", columns="coeff", values="y", aggfunc="first")
    if c not in y or 0.0 not in y:
        return 0, 0
    both = y[[0.0, c]].dropna()
    right0, rightc = both[0.0] > 0, both[c] > 0
    return int((right0 & ~rightc).sum()), int((~right0 & rightc).sum())


def coherent_range(table: pd.DataFrame, nll_tol: float = 0.5, pmass_floor: float = 0.5) -> float:
    """Largest |c| such that every scored c with |c'| <= |c| has ΔNLL <= nll_tol and mean pmass >= pmass_floor.

    NaN when even c = 0 fails the pmass floor (the model does not answer the question format)."""
    ok_at: dict[float, bool] = {}
    for c in sorted(table["coeff"].unique(), key=abs):
        d = dnll_at(table, c) if c != 0 else 0.0
        ok = bool(np.isfinite(d) and d <= nll_tol and table.loc[table["coeff"] == c, "pmass"].mean() >= pmass_floor)
        ok_at[abs(c)] = ok_at.get(abs(c), True) and ok
    best = np.nan
    for a in sorted(ok_at):
        if not ok_at[a]:
            break
        best = a
    return float(best)


def summarize(
    table: pd.DataFrame,
    target_dim: str,
    n_boot: int = 1000,
    seed: int = 0,
    c_ref: float = 1.0,
    nll_tol: float = 0.5,
    pmass_floor: float = 0.5,
    alpha: float = 0.05,
    min_dilemmas: int = 5,
    effects: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Headline numbers for one slice (all slopes are nats of signed log-ratio per unit c).

    target_dim; effect, se, ci_low, ci_high, t, p, spearman, n_rows, n_dilemmas: the target dim's row
      of `effects_by_dim` (over all scored c);
    dnll: mean prompt ΔNLL (nats/token) vs c = 0 at c = ±c_ref, averaged over the signs scored
      (dnll_pos, dnll_neg separately); pmass_drop: mean pmass at c = 0 minus at ±c_ref (same averaging);
    gain: 100·|t| / (1 + max(0, dnll)), with t of the target slope fitted on |c| <= c_ref;
    coherent_range: `coherent_range(table, nll_tol, pmass_floor)`;
    side_effect_mean_abs: mean |effect| over the other dims; side_effect_n_sig: how many of them are
      significant after Benjamini-Hochberg FDR at `alpha`;
    yesbias_effect (+ _se, _ci_low, _ci_high, _t, _p, _n_dilemmas): the target slope on label-balanced
      dilemmas only (their target labels sum to 0, e.g. one +1 and one -1 row), where a pure shift toward
      choice_pos cancels;
    raw_shift (+ _ci_low, _ci_high, _p): slope of the unsigned log-ratio on c over target-labelled rows
      (> 0: the steering just says choice_pos / "Yes" more);
    flips_forward_fixed / flips_forward_broken: target rows wrong at c = 0 and right at +c_ref / the
      reverse; flips_reverse_flipped / flips_reverse_counter: rows right at 0 and wrong at -c_ref
      (moved as intended) / wrong at 0 and right at -c_ref (moved against the intent);
    n_nan: NaN log-ratios (pmass below threshold) in the whole slice; n_scored: rows of the slice.
    """
    _check_slice(table)
    _label_col(table, target_dim)
    effects = effects if effects is not None else effects_by_dim(table, n_boot, seed, min_dilemmas, alpha)
    row = effects.set_index("dim").loc[target_dim]
    out: dict[str, Any] = {"target_dim": target_dim}
    out.update({k: row[k] for k in ("effect", "se", "ci_low", "ci_high", "t", "p", "spearman", "n_rows", "n_dilemmas")})
    dn = {"pos": dnll_at(table, c_ref), "neg": dnll_at(table, -c_ref)}
    finite = [v for v in dn.values() if np.isfinite(v)]
    out.update(dnll_pos=dn["pos"], dnll_neg=dn["neg"], dnll=float(np.mean(finite)) if finite else np.nan)
    pm = table.groupby("coeff")["pmass"].mean()
    at_ref = [pm[c] for c in (c_ref, -c_ref) if c in pm]
    out["pmass_drop"] = float(pm.get(0.0, np.nan) - np.mean(at_ref)) if at_ref else np.nan
    s = signed(table, target_dim)
    unit = s[s["coeff"].abs() <= c_ref]
    t_unit = slope_test(unit["coeff"], unit["y"], unit["dilemma_id"], n_boot, seed)["t"] if unit["coeff"].nunique() >= 2 else np.nan
    out["gain"] = float(100 * abs(t_unit) / (1 + max(0.0, out["dnll"]))) if np.isfinite(t_unit) and np.isfinite(out["dnll"]) else np.nan
    out["coherent_range"] = coherent_range(table, nll_tol, pmass_floor)
    side = effects[(effects["dim"] != target_dim) & effects["effect"].notna()]
    out["side_effect_mean_abs"] = float(side["effect"].abs().mean()) if len(side) else np.nan
    out["side_effect_n_sig"] = int(side["significant"].sum())
    complete = s.groupby("row_id")["coeff"].transform("nunique") == table["coeff"].nunique()
    sc = s[complete]
    balanced = sc.drop_duplicates("row_id").groupby("dilemma_id")["label"].sum() == 0
    yb = sc[sc["dilemma_id"].map(balanced).fillna(False).astype(bool)]
    ybt = slope_test(yb["coeff"], yb["y"], yb["dilemma_id"], n_boot, seed) if yb["coeff"].nunique() >= 2 else {}
    for k in ("effect", "se", "ci_low", "ci_high", "t", "p", "n_dilemmas"):
        out[f"yesbias_{k}"] = ybt.get(k, np.nan)
    raw = slope_test(s["coeff"], s["logratio"], s["dilemma_id"], n_boot, seed) if s["coeff"].nunique() >= 2 else {}
    out.update(raw_shift=raw.get("effect", np.nan), raw_shift_ci_low=raw.get("ci_low", np.nan),
               raw_shift_ci_high=raw.get("ci_high", np.nan), raw_shift_p=raw.get("p", np.nan))
    broken, fixed = _flips(s, c_ref)
    flipped, counter = _flips(s, -c_ref)
    out.update(flips_forward_fixed=fixed, flips_forward_broken=broken,
               flips_reverse_flipped=flipped, flips_reverse_counter=counter)
    out.update(n_nan=int(table["logratio"].isna().sum()), n_scored=len(table))
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in out.items()}
