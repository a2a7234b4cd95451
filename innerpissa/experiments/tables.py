"""Paper tables from collected runs: Table 1 (methods), against the grain (c = −1 vs the dishonest prompt),
Table 2 (ablations vs full) and ideas that failed.

Each table function returns a display frame (formatted strings, every number with its CI and n) whose
numbers live in `df.attrs["stats"]` (numeric, one row per display row); `write_table` saves that as the CSV.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from .. import steerers
from ..io import atomic_write_text
from .seedstats import LEVEL, drop, seed_aggregate

# target label dimension per dataset, used when summary.json does not name one ("target_dim")
DEFAULT_TARGETS = {"dd-honesty": "Value/honesty", "truthfulqa": "truthfulqa/true"}
TABLE1_METRICS = ["effect", "side_effect_mean_abs", "side_effect_n_sig", "dnll", "gain", "coherent_range", "yesbias_effect",
                  "action_bias", "effect_pooled", "control_score", "control_probe_score"]
CALIBRATION_METRICS = ["coeff_pos", "coeff_neg", "kl_pos", "kl_neg"]  # the run's c at ±1 and its KL (eval.calibrate)


def _num(x: float) -> str:
    if not np.isfinite(x):
        return "–"
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.1f}" if abs(x) >= 10 else f"{x:.3f}"


def fmt_p(p: float) -> str:
    """p-value for tables: two significant digits, scientific below 1e-4."""
    return "–" if not np.isfinite(p) else f"{p:.1e}" if p < 1e-4 else f"{p:.2g}"


def _count(x: float) -> str:
    return "–" if not np.isfinite(x) else f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"


def fmt_ci(agg: dict, num: Callable[[float], str] = _num) -> str:
    """'m ± h' for a t-interval over seeds, 'm [lo, hi] (basis)' for a within-run interval, else flags no CI."""
    m, lo, hi, basis = agg["mean"], agg["lo"], agg["hi"], agg["basis"]
    if not np.isfinite(m):
        return "–"
    if basis == "seeds":
        return f"{num(m)} ± {num((hi - lo) / 2)}"
    if np.isfinite(lo) and np.isfinite(hi):
        return f"{num(m)} [{num(lo)}, {num(hi)}] ({basis})"
    return f"{num(m)} ({basis}, no CI)"


def _flat(prefix: str, agg: dict) -> dict:
    return {f"{prefix}_{k}" if k != "mean" else prefix: v for k, v in agg.items()}


def _select(collected: pd.DataFrame, dataset: str, presets: bool) -> pd.DataFrame:
    if dataset not in set(collected["dataset"]):
        raise ValueError(f"no runs scored on dataset {dataset!r}; datasets present: {sorted(set(collected['dataset']))}")
    runs = collected[(collected["dataset"] == dataset) & (collected["preset"].notna() == presets)]
    for key in ("model", "concept"):
        if runs[key].nunique(dropna=False) > 1:
            raise ValueError(f"runs for several {key}s ({sorted(map(str, runs[key].unique()))}): report one {key} per results root")
    return runs


def variant_labels(runs: pd.DataFrame) -> pd.Series:
    """Row label per run: the method name, plus the params that differ when a method has several configs (a run on
    the method's defaults, params {} or what `explicit_params` spells out for them, e.g. InnerPiSSA's default recipe
    alone, keeps the plain name: it is the row other variants are read against)."""
    labels = pd.Series(runs["method"].astype(str), index=runs.index)
    for method, g in runs.groupby("method"):
        keys = sorted(g["params_key"].unique())
        if len(keys) < 2:
            continue
        dicts = {k: json.loads(k) for k in keys}
        differ = sorted({p for d in dicts.values() for p in d if len({json.dumps(e.get(p)) for e in dicts.values()}) > 1})
        defaults = steerers.method_class(str(method)).explicit_params({})
        for k, d in dicts.items():
            if d and d != defaults:
                labels[g.index[g["params_key"] == k]] = f"{method} (" + ", ".join(f"{p}={d.get(p)}" for p in differ) + ")"
    return labels


def order_labels(labels: list[str]) -> list[str]:
    """Method labels in the paper order (each method's `rank`: the method, then prompting, then the other
    baselines; unranked methods after them by name), variants sorted."""
    return sorted(labels, key=lambda s: (steerers.method_class(s.split(" (")[0]).rank, s))


def _n_text(n_seeds: int, rows: pd.Series, dilemmas: pd.Series | None = None) -> str:
    seeds = f"{n_seeds} seed" + ("s" if n_seeds != 1 else "")
    r = pd.to_numeric(rows, errors="coerce").dropna()
    rtxt = "" if r.empty else f", {int(r.min())}" + (f"–{int(r.max())}" if r.max() > r.min() else "") + " rows"
    d = pd.to_numeric(dilemmas, errors="coerce").dropna() if dilemmas is not None else pd.Series(dtype=float)
    return seeds + rtxt + ("" if d.empty else f" ({int(d.max())} dilemmas)")


def table1(collected: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Table 1: each method (runs without a preset) as mean ± 95% CI over seeds on `dataset`.

    t and p test the effect against 0 over seeds; a method with one seed (or identical seeds) shows its
    within-run bootstrap CI and test instead and is marked. Numbers in `attrs["stats"]`."""
    runs = _select(collected, dataset, presets=False)
    if runs.empty:
        raise ValueError(f"no method runs (preset = null) on {dataset!r}: run `innerpissa compare` first")
    runs = runs.assign(label=variant_labels(runs))
    stat_rows, rows = [], []
    for label in order_labels(list(runs["label"].unique())):
        g = runs[runs["label"] == label]
        aggs = {m: seed_aggregate(g, m) for m in TABLE1_METRICS + CALIBRATION_METRICS + ["selectivity", *AUDIT_METRICS]}
        eff, yb = aggs["effect"], aggs["yesbias_effect"]
        n_seeds = int(g["seed"].nunique())
        st = {"label": label, "method": g["method"].iloc[0], "n_seeds": n_seeds,
              "n_rows": pd.to_numeric(g.get("n_rows"), errors="coerce").max()}
        for m, a in aggs.items():  # t/p against 0 only mean something for the signed effects
            st.update(_flat(m, a if m in ("effect", "yesbias_effect") else {k: v for k, v in a.items() if k not in ("t", "p")}))
        stat_rows.append(st)
        one = " (1 seed)" if n_seeds == 1 else ""
        rows.append({
            "Method": label + one,
            "n": _n_text(n_seeds, g.get("n_rows"), g.get("n_dilemmas")),
            "Effect ± CI": fmt_ci(eff),
            "t": "–" if not np.isfinite(eff["t"]) else f"{eff['t']:.2f}",
            "p": fmt_p(eff["p"]),
            "side effects": f"{fmt_ci(aggs['side_effect_mean_abs'])}; {fmt_ci(aggs['side_effect_n_sig'], _count)} sig",
            "ΔNLL": fmt_ci(aggs["dnll"]),
            "Gain": fmt_ci(aggs["gain"]),
            "coherent range": fmt_ci(aggs["coherent_range"]),
            "Yes-bias-controlled effect": f"{fmt_ci(yb)} (p={fmt_p(yb['p'])})",
            "action bias": fmt_ci(aggs["action_bias"]),
            "positive control r": fmt_ci(aggs["control_score"]),
            "probe control": fmt_ci(aggs["control_probe_score"]),
            "pooled effect (not side-balanced)": fmt_ci(aggs["effect_pooled"]),
            "c +/− (KL +/−)": _calibration_cell(g, aggs),
            "selectivity": fmt_ci(aggs["selectivity"]),
            "audit: ref logscore (their |t|)": f"{fmt_ci(aggs['ref_logscore'])} (|t| {_num(aggs['ref_logscore_abs_t']['mean'])})",
            "audit: Steering F1": fmt_ci(aggs["steering_f1"]),
        })
    out = pd.DataFrame(rows)
    out.attrs["stats"] = pd.DataFrame(stat_rows)
    return out


def console_references() -> list[str]:
    """The baselines Table 1's console form reads every method against: prompting and the random-direction null."""
    return [m for m in (steerers.with_role("prompting"), steerers.with_role("null")) if m is not None]


def table1_console(t1: pd.DataFrame) -> pd.DataFrame:
    """Table 1 narrowed for a terminal (well under 120 columns): Method, seeds, effect [95% CI], the effect minus
    prompting's and minus the random direction's, ΔNLL. The differences are of the mean effects, without a CI;
    the CI is over seeds with several seeds, else the run's own dilemma bootstrap. The full table (every column,
    each CI's basis) is the one `write_table` writes."""
    st = t1.attrs["stats"]
    mean = st.set_index("label")["effect"]
    refs = [r for r in console_references() if r in mean.index]
    rows = []
    for _, r in st.iterrows():
        ci = f" [{_num(r['effect_lo'])}, {_num(r['effect_hi'])}]" if np.isfinite(r["effect_lo"]) else " (no CI)"
        row = {"Method": r["label"], "seeds": str(r["n_seeds"]), "effect [95% CI]": _num(r["effect"]) + ci}
        for ref in refs:
            diff = r["effect"] - mean[ref]
            row[f"vs {ref}"] = "–" if r["label"] == ref or not np.isfinite(diff) else ("+" if diff > 0 else "") + _num(diff)
        rows.append({**row, "ΔNLL": _num(r["dnll"])})
    return pd.DataFrame(rows)


def _calibration_cell(runs: pd.DataFrame, aggs: dict) -> str:
    """'+c/−c (KL +/−)' at the run's ±1, averaged over seeds; prefixed with the budget for calibrated runs."""
    m = {k: aggs[k]["mean"] for k in CALIBRATION_METRICS}
    if not np.isfinite(m["kl_pos"]):
        return "–"
    budget = pd.to_numeric(runs.get("kl_budget"), errors="coerce").dropna() if "kl_budget" in runs else pd.Series(dtype=float)
    head = f"at KL {budget.iloc[0]:g} {runs['kl_stat'].iloc[0]}: " if len(budget) else ""
    return f"{head}+{_num(m['coeff_pos'])}/−{_num(m['coeff_neg'])} ({_num(m['kl_pos'])}/{_num(m['kl_neg'])})"


def target_dim(collected: pd.DataFrame, dataset: str) -> str:
    """The label dimension the effect is signed by on `dataset` (summary's target_dim, else the default map)."""
    if "target_dim" in collected:
        named = collected.loc[collected["dataset"] == dataset, "target_dim"].dropna().unique()
        if len(named):
            return str(named[0])
    if dataset not in DEFAULT_TARGETS:
        raise ValueError(f"no target dimension known for dataset {dataset!r}: add 'target_dim' to its summary.json")
    return DEFAULT_TARGETS[dataset]


def _dilemma_ci(per_row: pd.DataFrame, col: str) -> dict:
    """Mean of `col` over rows with a t-interval over dilemma means (rows of one dilemma are not independent)."""
    by_dilemma = per_row.groupby("cluster")[col].mean().dropna().to_numpy()
    if len(by_dilemma) < 2 or np.ptp(by_dilemma) == 0:
        return {"mean": per_row[col].mean(), "lo": np.nan, "hi": np.nan, "p": np.nan, "n_rows": int(per_row[col].notna().sum()),
                "n_dilemmas": len(by_dilemma)}
    test = stats.ttest_1samp(by_dilemma, 0.0)
    ci = test.confidence_interval(LEVEL)
    return {"mean": per_row[col].mean(), "lo": ci.low, "hi": ci.high, "p": test.pvalue,
            "n_rows": int(per_row[col].notna().sum()), "n_dilemmas": len(by_dilemma)}


def _shifts(scores: pd.DataFrame, runs: pd.DataFrame, dataset: str, target: str) -> pd.DataFrame:
    """Per (label, row): label-signed log-ratio at c = −1 minus at c = 0, averaged over the label's seeds."""
    col = f"label:{target}"
    s = scores[(scores["dataset"] == dataset) & scores["run_hash"].isin(runs["run_hash"])]
    if col not in s:
        raise ValueError(f"scores for {dataset!r} have no column {col!r}: cannot sign the effect")
    if not {-1.0, 0.0} <= set(s["coeff"]):
        raise ValueError(f"against-the-grain needs scores at c = -1 and c = 0 on {dataset!r}")
    s = s[s["coeff"].isin([-1.0, 0.0])].assign(signed=lambda x: x["logratio"] * x[col])
    wide = s.pivot_table(index=["run_hash", "row_id"], columns="coeff", values="signed", aggfunc="mean", dropna=False)
    shift = (wide[-1.0] - wide[0.0]).rename("shift").reset_index()
    cluster = s.drop_duplicates("row_id").set_index("row_id")["dilemma_id"] if "dilemma_id" in s else None
    shift["cluster"] = shift["row_id"].map(cluster) if cluster is not None else shift["row_id"]
    shift["cluster"] = shift["cluster"].fillna(shift["row_id"])
    shift["label"] = shift["run_hash"].map(runs.set_index("run_hash")["label"])
    return shift.groupby(["label", "row_id", "cluster"], as_index=False)["shift"].mean()


def against_the_grain(collected: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """Each method at c = −1 vs the dishonest prompt: label-signed mean at c = −1 minus c = 0 (negative = pushed
    against the honest label), with a 95% CI over dilemmas, and the paired difference to prompting (the method whose
    role is "prompting") at −1."""
    if scores.empty or "run_hash" not in scores:
        raise ValueError("against-the-grain needs per-row scores with a run_hash column (use collect.load_scores)")
    prompting = steerers.with_role("prompting") or "prompting"
    rows, stat_rows = [], []
    for dataset in sorted(set(scores["dataset"]) & set(collected["dataset"])):
        runs = _select(collected, dataset, presets=False)
        runs = runs.assign(label=variant_labels(runs))
        shift = _shifts(scores, runs, dataset, target_dim(collected, dataset))
        prompts = order_labels([lab for lab in shift["label"].unique() if lab.split(" (")[0] == prompting])
        ref = shift[shift["label"] == prompts[0]].set_index("row_id")["shift"] if prompts else None
        for label in order_labels(list(shift["label"].unique())):
            per_row = shift[shift["label"] == label].copy()
            a = _dilemma_ci(per_row, "shift")
            st = {"dataset": dataset, "label": label, "n_seeds": int(runs.loc[runs["label"] == label, "seed"].nunique()),
                  **_flat("shift", {k: a[k] for k in ("mean", "lo", "hi", "p")}), "n_rows": a["n_rows"], "n_dilemmas": a["n_dilemmas"]}
            vs = "–"
            if ref is not None and label != prompts[0]:
                per_row["vs_prompt"] = per_row["shift"] - per_row["row_id"].map(ref)
                b = _dilemma_ci(per_row.dropna(subset=["vs_prompt"]), "vs_prompt")
                st.update(_flat("vs_prompt", {k: b[k] for k in ("mean", "lo", "hi", "p")}))
                vs = f"{_num(b['mean'])} [{_num(b['lo'])}, {_num(b['hi'])}] (p={fmt_p(b['p'])})"
            stat_rows.append(st)
            rows.append({"dataset": dataset, "Method": label,
                         "n": f"{st['n_seeds']} seed{'s' if st['n_seeds'] != 1 else ''}, {a['n_rows']} rows ({a['n_dilemmas']} dilemmas)",
                         "shift at c = −1 [95% CI]": f"{_num(a['mean'])} [{_num(a['lo'])}, {_num(a['hi'])}] (p={fmt_p(a['p'])})",
                         f"minus {prompts[0] if prompts else prompting} at c = −1": vs})
    out = pd.DataFrame(rows)
    out.attrs["stats"] = pd.DataFrame(stat_rows)
    return out


def _ablation_stats(collected: pd.DataFrame, dataset: str) -> pd.DataFrame:
    runs = _select(collected, dataset, presets=True)
    if "full" not in set(runs["preset"]):
        raise ValueError(f"no runs with preset 'full' on {dataset!r}: the ablation table needs it as the reference")
    full = runs[runs["preset"] == "full"]
    rows = []
    for preset in ["full"] + sorted(set(runs["preset"]) - {"full"}):
        g = runs[runs["preset"] == preset]
        st = {"preset": preset, "n_seeds": int(g["seed"].nunique()), "n_rows": pd.to_numeric(g.get("n_rows"), errors="coerce").max()}
        for m in ("effect", "gain", "dnll"):
            st.update(_flat(m, seed_aggregate(g, m)))
        for m in ("effect", "gain"):
            st.update(_flat(f"drop_{m}", drop(full, g, m) if preset != "full" else {"mean": np.nan, "basis": "reference"}))
        rows.append(st)
    return pd.DataFrame(rows)


def _agg_of(st: pd.Series, m: str) -> dict:
    return {"mean": st[m], "lo": st.get(f"{m}_lo", np.nan), "hi": st.get(f"{m}_hi", np.nan), "basis": st.get(f"{m}_basis", "none")}


def _drop_cell(st: pd.Series, m: str) -> str:
    a = _agg_of(st, f"drop_{m}")
    if a["basis"] == "reference":
        return "(reference)"
    ci = f" [{_num(a['lo'])}, {_num(a['hi'])}]" if np.isfinite(a["lo"]) else " (no CI)"
    return f"{_num(a['mean'])}{ci}"


def table2_ablations(collected: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Table 2: each ablation preset vs 'full' (effect, Gain, ΔNLL; drop = full − preset, positive = the
    ablation is worse) with 95% CIs and n seeds. Numbers in `attrs["stats"]`."""
    st = _ablation_stats(collected, dataset)
    rows = [{"Preset": r["preset"] + (" (1 seed)" if r["n_seeds"] == 1 else ""),
             "n": _n_text(r["n_seeds"], pd.Series([r["n_rows"]])),
             "Effect ± CI": fmt_ci(_agg_of(r, "effect")), "Gain": fmt_ci(_agg_of(r, "gain")), "ΔNLL": fmt_ci(_agg_of(r, "dnll")),
             "drop vs full (effect)": _drop_cell(r, "effect"), "drop vs full (Gain)": _drop_cell(r, "gain"),
             "drop CI basis": r["drop_effect_basis"]} for _, r in st.iterrows()]
    out = pd.DataFrame(rows)
    out.attrs["stats"] = st
    return out


def ideas_that_failed(collected: pd.DataFrame, dataset: str, metric: str = "gain") -> pd.DataFrame:
    """Ablations that lost to 'full' on `metric` (drop > 0), worst first, with numbers and whether the CI excludes 0."""
    st = _ablation_stats(collected, dataset)
    full = st[st["preset"] == "full"].iloc[0]
    lost = st[(st["preset"] != "full") & (st[f"drop_{metric}"] > 0)].sort_values(f"drop_{metric}", ascending=False)
    rows = [{"Preset": r["preset"], "n seeds (preset / full)": f"{r['n_seeds']} / {full['n_seeds']}",
             f"{metric} full": fmt_ci(_agg_of(full, metric)), f"{metric} preset": fmt_ci(_agg_of(r, metric)),
             f"drop in {metric} [95% CI]": _drop_cell(r, metric),
             "CI excludes 0": "yes" if r[f"drop_{metric}_lo"] > 0 else "no"} for _, r in lost.iterrows()]
    out = pd.DataFrame(rows, columns=["Preset", "n seeds (preset / full)", f"{metric} full", f"{metric} preset",
                                      f"drop in {metric} [95% CI]", "CI excludes 0"])
    out.attrs["stats"] = lost.reset_index(drop=True)
    return out


def to_markdown(df: pd.DataFrame) -> str:
    """GitHub pipe table of a display frame (index dropped, pipes escaped)."""
    def cell(x: object) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


_LATEX = {"±": r"$\pm$", "Δ": r"$\Delta$", "−": "-", "–": "--", "∩": r"$\cap$", "≥": r"$\geq$"}


def to_latex(df: pd.DataFrame) -> str:
    """booktabs LaTeX table of a display frame (special characters escaped, unicode maths made LaTeX)."""
    tex = df.to_latex(index=False, escape=True)
    for k, v in _LATEX.items():
        tex = tex.replace(k, v)
    return tex


def write_table(df: pd.DataFrame, out_stem: Path) -> None:
    """Write `out_stem`.md and .tex (display) and .csv (the numeric `attrs['stats']` when present), atomically."""
    out_stem = Path(out_stem)
    atomic_write_text(out_stem.parent / f"{out_stem.name}.md", to_markdown(df))
    atomic_write_text(out_stem.parent / f"{out_stem.name}.tex", to_latex(df))
    atomic_write_text(out_stem.parent / f"{out_stem.name}.csv", df.attrs.get("stats", df).to_csv(index=False))


# --- issue 9: the powered comparison (pooled seeds, paired differences vs a reference) and the audit ---

AUDIT_METRICS = ("ref_logscore", "ref_logscore_abs_t", "steering_f1")  # the references' metrics (eval.metrics)


def _run_tables(scores: pd.DataFrame, runs: pd.DataFrame, dataset: str) -> list[pd.DataFrame]:
    """One ScoreTable per run (seed) of `runs` on `dataset`."""
    s = scores[scores["dataset"] == dataset]
    return [g for _, g in s[s["run_hash"].isin(runs["run_hash"])].groupby("run_hash")]


def powered_rows(collected: pd.DataFrame, scores: pd.DataFrame, dataset: str, reference: str | None = None,
                 n_boot: int = 1000, seed: int = 0, null: str | None = None) -> pd.DataFrame:
    """Per method label on `dataset`: the effect pooled over its seeds (`eval.metrics.pooled_effect`: dilemma ×
    seed bootstrap), the paired difference to `reference` on the same dilemmas (`paired_difference`; a method
    "beats" another only when that CI excludes 0), where the effect falls against the `null` method's seeds
    (`null_lo`/`null_hi`: the 95% prediction interval of one more random direction, `eval.control.null_band`;
    conservative for a method pooled over several seeds), and seed means of kl/coefficients, action bias,
    selectivity and the audit metrics from the runs' summaries. One row per label (numbers only). `reference` and
    `null` default to the methods whose role is "method" and "null"."""
    from ..eval.control import null_band
    from ..eval.metrics import paired_difference, pooled_effect

    reference = reference or steerers.with_role("method")
    null = null or steerers.with_role("null")

    runs = _select(collected, dataset, presets=False)
    runs = runs.assign(label=variant_labels(runs))
    dim = target_dim(collected, dataset)
    tabs = {lab: _run_tables(scores, runs[runs["label"] == lab], dataset) for lab in order_labels(list(runs["label"].unique()))}
    ref = tabs.get(reference) or []
    band = null_band([pooled_effect([t], dim, 0)["effect"] for t in tabs.get(null) or []])
    rows = []
    for label, t in tabs.items():
        g = runs[runs["label"] == label]
        mean = {k: float(pd.to_numeric(g[k], errors="coerce").mean()) if k in g else np.nan
                for k in ("kl_budget", "coeff_pos", "coeff_neg", "kl_pos", "kl_neg", "action_bias", "selectivity",
                          "raw_shift", "control_score", "control_probe_score", *AUDIT_METRICS)}
        row = {"label": label, "method": g["method"].iloc[0], "n_seeds": int(g["seed"].nunique()), **mean}
        if t:
            p = pooled_effect(t, dim, n_boot, seed)
            row.update(effect=p["effect"], ci_low=p["ci_low"], ci_high=p["ci_high"], p=p["p"], seed_sd=p["seed_sd"],
                       n_dilemmas=p["n_dilemmas"])
        if t and ref and label != reference:
            d = paired_difference(t, ref, dim, n_boot, seed)
            row.update(vs_ref_diff=d["diff"], vs_ref_ci_low=d["ci_low"], vs_ref_ci_high=d["ci_high"], vs_ref_p=d["p"])
        eff, n_lo, n_hi = row.get("effect", np.nan), band["null_lo"], band["null_hi"]
        row.update(null_lo=n_lo, null_hi=n_hi, null_n=band["null_n"], vs_null=(
            "(the null)" if row["method"] == null else "–" if not (np.isfinite(eff) and np.isfinite(n_lo)) else
            "above" if eff > n_hi else "below" if eff < n_lo else "inside"))
        rows.append(row)
    return pd.DataFrame(rows)


def powered_table(collected: pd.DataFrame, scores: pd.DataFrame, dataset: str, reference: str | None = None,
                  n_boot: int = 1000, null: str | None = None) -> pd.DataFrame:
    """Display frame of `powered_rows` (numbers in attrs['stats']): effect [CI] pooled over seeds, the paired
    difference to `reference` [CI] and whether it excludes 0, whether the effect is above, inside or below the
    `null` band, KL/coefficients, action bias, selectivity (defaults as in `powered_rows`)."""
    reference = reference or steerers.with_role("method")
    null = null or steerers.with_role("null")
    st = powered_rows(collected, scores, dataset, reference, n_boot, null=null)
    get = lambda r, k: r.get(k, np.nan)  # noqa: E731
    rows = []
    for _, r in st.iterrows():
        lo, hi = get(r, "vs_ref_ci_low"), get(r, "vs_ref_ci_high")
        verdict = "–" if not np.isfinite(lo) else ("beats" if lo > 0 else "loses to" if hi < 0 else "no difference from")
        vs_null = (f"(the null: {_num(r['null_lo'])} … {_num(r['null_hi'])}, {int(r['null_n'])} seeds)"
                   if r["vs_null"] == "(the null)" else r["vs_null"])
        rows.append({
            "Method": r["label"], "seeds": r["n_seeds"],
            "KL budget": "raw c" if not np.isfinite(get(r, "kl_budget")) else f"{r['kl_budget']:g}",
            "c +/− (KL +/−)": f"+{_num(get(r, 'coeff_pos'))}/−{_num(get(r, 'coeff_neg'))} "
                              f"({_num(get(r, 'kl_pos'))}/{_num(get(r, 'kl_neg'))})",
            "effect [95% CI, dilemmas × seeds]": f"{_num(get(r, 'effect'))} [{_num(get(r, 'ci_low'))}, {_num(get(r, 'ci_high'))}]",
            f"minus {reference} [paired 95% CI]": "(reference)" if r["label"] == reference else
            f"{_num(get(r, 'vs_ref_diff'))} [{_num(lo)}, {_num(hi)}]",
            f"vs {reference}": verdict if r["label"] != reference else "–",
            f"vs {null} null (95% PI)": vs_null,
            "action bias": _num(get(r, "action_bias")), "selectivity": _num(get(r, "selectivity")),
            "control r / probe": f"{_num(get(r, 'control_score'))} / {_num(get(r, 'control_probe_score'))}",
        })
    out = pd.DataFrame(rows)
    out.attrs["stats"] = st
    return out


def audit_correlations(collected: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """How much of each reference metric is the raw Yes-shift: Pearson r across method runs (every method and
    seed) of `ref_logscore`, its reported |t| and `steering_f1` with our `raw_shift`, with |raw_shift| and with
    our side-balanced `effect` (docs/metrics_audit.md). Numbers in attrs['stats'] (`corr_with_raw_shift`, ...)."""
    runs = _select(collected, dataset, presets=False)
    col = lambda k: pd.to_numeric(runs[k], errors="coerce") if k in runs else pd.Series(np.nan, index=runs.index)  # noqa: E731
    raw, eff = col("raw_shift"), col("effect")
    rows = []
    for m in AUDIT_METRICS:
        v = col(m)
        r = {"metric": m, "n_runs": int((v.notna() & raw.notna()).sum())}
        for name, other in (("raw_shift", raw), ("abs_raw_shift", raw.abs()), ("effect", eff)):
            ok = v.notna() & other.notna()
            good = ok.sum() >= 3 and v[ok].nunique() > 1 and other[ok].nunique() > 1
            r[f"corr_with_{name}"] = float(stats.pearsonr(v[ok], other[ok]).statistic) if good else np.nan
        rows.append(r)
    st = pd.DataFrame(rows)
    out = pd.DataFrame({"reference metric": st["metric"], "runs": st["n_runs"],
                        "r with raw Yes-shift": st["corr_with_raw_shift"].map(lambda x: f"{x:+.2f}" if np.isfinite(x) else "–"),
                        "r with |raw Yes-shift|": st["corr_with_abs_raw_shift"].map(lambda x: f"{x:+.2f}" if np.isfinite(x) else "–"),
                        "r with our effect": st["corr_with_effect"].map(lambda x: f"{x:+.2f}" if np.isfinite(x) else "–")})
    out.attrs["stats"] = st
    return out


def quality_rows(stats: pd.DataFrame, reference: str | None = None, null: str | None = None) -> list[dict]:
    """`powered_rows` as the bench's JSON rows: {method, kl, kl_pos, kl_neg, coeff_pos, coeff_neg, n_seeds, effect,
    ci_low, ci_high, action_bias, selectivity, paired_vs_<reference>: {diff, ci_low, ci_high} or None,
    vs_<null>_null: {verdict (above / inside / below), null_lo, null_hi, null_n} (the null seeds' 95%
    prediction interval), positive_control: {r, probe} (seed means of the token-level and hidden-state controls),
    audit: {ref_logscore, ref_logscore_abs_t, steering_f1}}; NaN becomes None. `reference` and `null` default to
    the methods whose role is "method" and "null"."""
    reference = reference or steerers.with_role("method")
    null = null or steerers.with_role("null")

    def num(r: pd.Series, k: str) -> float | None:
        v = r.get(k, np.nan)
        return float(v) if pd.notna(v) and np.isfinite(v) else None

    rows = []
    for _, r in stats.iterrows():
        diff = num(r, "vs_ref_diff")
        rows.append({"method": r["label"], "kl": num(r, "kl_budget"), "kl_pos": num(r, "kl_pos"), "kl_neg": num(r, "kl_neg"),
                     "coeff_pos": num(r, "coeff_pos"), "coeff_neg": num(r, "coeff_neg"), "n_seeds": int(r["n_seeds"]),
                     **{k: num(r, k) for k in ("effect", "ci_low", "ci_high", "action_bias", "selectivity")},
                     f"paired_vs_{reference}": None if diff is None else
                     {"diff": diff, "ci_low": num(r, "vs_ref_ci_low"), "ci_high": num(r, "vs_ref_ci_high")},
                     f"vs_{null}_null": {"verdict": r["vs_null"], "null_lo": num(r, "null_lo"),
                                        "null_hi": num(r, "null_hi"), "null_n": int(r["null_n"])},
                     "positive_control": {"r": num(r, "control_score"), "probe": num(r, "control_probe_score")},
                     "audit": {k: num(r, k) for k in AUDIT_METRICS}})
    return rows
