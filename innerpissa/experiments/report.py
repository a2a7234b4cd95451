"""The paper report: `build_report(root, out)` reads every complete run under a results root and writes
Table 1, against-the-grain, Table 2 ablations, ideas that failed (md + LaTeX + CSV), Figures 1–3 (PNG),
steered samples, `report.md` and one self-contained `report.html` (images inlined as data URIs)."""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .. import steerers
from ..io import atomic_write_text
from .collect import collect, collect_failed, kl_budget, load_samples, load_scores, skipped_dirs
from .figures import bar_chart, dose_response_figure, layer_depth_figure, side_effect_heatmap
from .seedstats import seed_aggregate
from .tables import (DEFAULT_TARGETS, against_the_grain, audit_correlations, ideas_that_failed, powered_table, table1,
                     table2_ablations, target_dim, order_labels, to_markdown, variant_labels, write_table)

__all__ = ["bar_chart", "build_report", "depth_stats", "dose_curves", "samples_table", "side_effects"]

MAX_HEATMAP_DIMS = 30
LEDGER_NOTE = ("These are the ablations of the runs in this report. The innerpissa project keeps its own, separate "
               "record of what it tried (docs/ideas_that_failed.md in its repository); it is not part of these results.")
STATS_NOTE = (
    "How to read the numbers. Effect: OLS slope of the label-signed log-ratio on c (nats per unit c) on the target "
    "dimension; Gain, ΔNLL, side effects and the Yes-bias-controlled effect are defined in innerpissa.eval.metrics. "
    "'m ± h': mean over seeds ± half-width of the 95% t-interval over seeds (every seed is scored on the same "
    "evaluation rows, so this is training-seed variability). 'm [lo, hi] (1 seed)' or '(identical over n seeds)', "
    "e.g. a deterministic method: that run's own 95% dilemma-bootstrap CI from its summary.json; 'no CI': the run "
    "reports none. n: seeds, evaluation rows (dilemmas). t and p test the effect against 0 over seeds (the run's own "
    "test for single runs). drop vs full = full − ablation (positive: the ablation is worse)."
)


def _scores_mean_over_seeds(scores: pd.DataFrame) -> pd.DataFrame:
    """One ScoreTable row per (row, coeff): numeric columns averaged over the seeds' runs (NaNs skipped), and the
    row's own fields (dilemma, side, method) kept, so the metrics still balance the sides of each dilemma."""
    num = [c for c in scores.columns if c in ("logratio", "pmass", "nll") or c.startswith("label:")]
    keep = [c for c in ("dilemma_id", "side", "method") if c in scores]
    out = scores.groupby(["dataset", "row_id", "coeff"], as_index=False).agg(
        {**{c: "mean" for c in num}, **{c: "first" for c in keep}})
    return out.assign(seed=0, truncated=False)


def _by_label(runs: pd.DataFrame, scores: pd.DataFrame, dataset: str) -> dict[str, tuple[pd.DataFrame, int]]:
    """Seed-averaged ScoreTable and seed count per Table-1 label on `dataset`."""
    out = {}
    for label in order_labels(list(runs["label"].unique())):
        hashes = runs.loc[runs["label"] == label, "run_hash"]
        s = scores[(scores["dataset"] == dataset) & scores["run_hash"].isin(hashes)]
        if len(s):
            out[label] = (_scores_mean_over_seeds(s), int(runs.loc[runs["label"] == label, "seed"].nunique()))
    return out


def _table1_runs(collected: pd.DataFrame, dataset: str) -> pd.DataFrame:
    runs = collected[(collected["dataset"] == dataset) & collected["preset"].isna()]
    return runs.assign(label=variant_labels(runs))


def dose_curves(collected: pd.DataFrame, scores: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Per Table-1 method: `eval.metrics.dose_response` on its seed-averaged scores, with label and n columns."""
    from ..eval.metrics import dose_response

    target = target_dim(collected, dataset)
    frames = [dose_response(t, target).assign(label=label, n_seeds=n, n_rows=t["row_id"].nunique())
              for label, (t, n) in _by_label(_table1_runs(collected, dataset), scores, dataset).items()]
    if not frames:
        return pd.DataFrame()
    num = ["coeff", "signed_mean", "ci_low", "ci_high", "dnll", "pmass"]
    return pd.concat(frames, ignore_index=True).astype(dict.fromkeys(num, float))  # all-NaN columns come back as object


def side_effects(collected: pd.DataFrame, scores: pd.DataFrame, dataset: str, max_dims: int = MAX_HEATMAP_DIMS) -> pd.DataFrame:
    """Per Table-1 method × label dim: `eval.metrics.effects_by_dim` on seed-averaged scores; the target dim first,
    then the `max_dims` − 1 dims with the largest |effect| over methods (dims without an estimate dropped)."""
    from ..eval.metrics import effects_by_dim

    frames = [effects_by_dim(t).assign(label=label, n_seeds=n)
              for label, (t, n) in _by_label(_table1_runs(collected, dataset), scores, dataset).items()]
    if not frames:
        return pd.DataFrame()
    eff = pd.concat(frames, ignore_index=True).dropna(subset=["effect"])
    target = target_dim(collected, dataset)
    biggest = eff[eff["dim"] != target].groupby("dim")["effect"].apply(lambda e: e.abs().max()).nlargest(max_dims - 1)
    dims = [target, *biggest.index]
    eff = eff[eff["dim"].isin(dims)]
    return eff.assign(_k=eff["dim"].map({d: i for i, d in enumerate(dims)})).sort_values("_k", kind="stable").drop(columns="_k")


def depth_stats(collected: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Effect and ΔNLL (mean, 95% CI over seeds) of the depth-family presets (x = preset value) and 'full'."""
    from .ablations import PRESETS

    runs = collected[(collected["dataset"] == dataset) & collected["preset"].notna()]
    rows = []
    for preset, g in runs.groupby("preset"):
        p = PRESETS.get(preset)
        if preset != "full" and (p is None or p.group != "depth"):
            continue
        row = {"preset": preset, "value": p.value if preset != "full" else np.nan, "n_seeds": int(g["seed"].nunique())}
        for m in ("effect", "dnll"):
            a = seed_aggregate(g, m)
            row.update({m: a["mean"], f"{m}_lo": a["lo"], f"{m}_hi": a["hi"]})
        rows.append(row)
    return pd.DataFrame(rows)


def samples_table(collected: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """Steered generations side by side: Method | seed | prompt | c = −1 | c = 0 | c = +1 (first seed per method)."""
    if samples.empty:
        return pd.DataFrame()
    runs = collected[collected["preset"].isna()].drop_duplicates("run_hash")
    runs = runs.assign(label=variant_labels(runs)).sort_values("seed").drop_duplicates("label")
    s = samples[samples["coeff"].isin([-1.0, 0.0, 1.0])].merge(runs[["run_hash", "label", "seed"]], on="run_hash")
    if s.empty:
        return pd.DataFrame()
    wide = s.pivot_table(index=["label", "seed", "prompt"], columns="coeff", values="completion", aggfunc="first").reset_index()
    wide = wide.rename(columns={-1.0: "c = −1", 0.0: "c = 0", 1.0: "c = +1", "label": "Method"})
    wide["Method"] = pd.Categorical(wide["Method"], order_labels(list(wide["Method"].unique())), ordered=True)
    return wide.sort_values(["Method", "prompt"]).astype(str).reset_index(drop=True)


# --- rendering: a report is a list of blocks, written once as markdown and once as self-contained HTML ---

def _md(blocks: list[tuple], out: Path) -> str:
    parts = []
    for kind, *a in blocks:
        if kind == "h":
            parts.append("#" * a[1] + " " + a[0])
        elif kind == "p":
            parts.append(a[0])
        elif kind == "table":
            parts.append(to_markdown(a[0]) if len(a[0]) else "_(empty)_")
        elif kind == "img":
            parts.append(f"![{a[1]}]({a[0].relative_to(out).as_posix()})\n\n_{a[1]}_")
    return "\n\n".join(parts) + "\n"


def _html(blocks: list[tuple], title: str) -> str:
    parts = []
    for kind, *a in blocks:
        if kind == "h":
            parts.append(f"<h{a[1]}>{html.escape(a[0])}</h{a[1]}>")
        elif kind == "p":
            parts.append(f"<p>{html.escape(a[0])}</p>")
        elif kind == "table":
            parts.append(a[0].to_html(index=False, escape=True, border=0, na_rep="–") if len(a[0]) else "<p><em>(empty)</em></p>")
        elif kind == "img":
            data = base64.b64encode(a[0].read_bytes()).decode("ascii")
            parts.append(f'<figure><img alt="{html.escape(a[1])}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{html.escape(a[1])}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;font-size:0.85em;margin:1em 0}th,td{border:1px solid #ccc;padding:3px 6px;"
             "vertical-align:top}th{background:#f3f3f3}img{max-width:100%}figcaption{font-size:0.85em;color:#555}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def _datasets(collected: pd.DataFrame) -> list[str]:
    rank = {d: i for i, d in enumerate(DEFAULT_TARGETS)}
    return sorted(collected["dataset"].unique(), key=lambda d: (rank.get(d, len(rank)), d))


def _dataset_blocks(collected: pd.DataFrame, scores: pd.DataFrame, ds: str, out: Path) -> list[tuple]:
    """Table 1 + Figures 1/3 (method runs) and Table 2 + ideas that failed + Figure 2 (presets) for one dataset."""
    tables, figs = out / "tables", out / "figures"
    blocks: list[tuple] = [("h", f"Dataset {ds} (target: {target_dim(collected, ds)})", 2)]
    here = collected[collected["dataset"] == ds]
    if here["preset"].isna().any():
        t1 = table1(collected, ds)
        write_table(t1, tables / f"table1_{ds}")
        blocks += [("h", "Table 1: main results", 3), ("table", t1),
                   ("img", bar_chart(t1, figs / f"table1_{ds}.png"), f"Table 1 on {ds}: effect and Gain, mean ± 95% CI")]
        curves = dose_curves(collected, scores, ds)
        if len(curves):
            blocks.append(("img", dose_response_figure(curves, figs / f"fig1_dose_response_{ds}.png", f"({ds})"),
                           f"Figure 1: dose-response on {ds}, seed-averaged, 95% CI bands over rows"))
        eff = side_effects(collected, scores, ds)
        if len(eff):
            blocks.append(("img", side_effect_heatmap(eff, figs / f"fig3_side_effects_{ds}.png", f"({ds})"),
                           f"Figure 3: per-dimension effects on {ds} (target + {eff['dim'].nunique() - 1} largest other dims)"))
    if here["preset"].isna().any():
        blocks += _powered_blocks(collected, scores, ds, tables)
    if "full" in set(here["preset"].dropna()):
        t2 = table2_ablations(collected, ds)
        write_table(t2, tables / f"table2_ablations_{ds}")
        metric = "gain" if np.isfinite(t2.attrs["stats"]["gain"].iloc[0]) else "effect"
        itf = ideas_that_failed(collected, ds, metric)
        write_table(itf, tables / f"ideas_that_failed_{ds}")
        blocks += [("h", "Table 2: ablations vs full", 3), ("table", t2),
                   ("h", f"Ideas that failed (ablations that lost to full on {metric})", 3), ("p", LEDGER_NOTE),
                   ("table", itf)]
        depth = depth_stats(collected, ds)
        if (depth["preset"] != "full").any():
            blocks.append(("img", layer_depth_figure(depth, figs / f"fig2_layer_depth_{ds}.png", f"({ds})"),
                           f"Figure 2: layer depth on {ds}, mean ± 95% CI (green: full)"))
    elif here["preset"].notna().any():
        blocks.append(("p", f"Ablation runs on {ds} have no 'full' reference run: Table 2 not built."))
    return blocks


AUDIT_NOTE = (
    "The references' DailyDilemmas metrics, computed on the same runs (innerpissa.eval.metrics: ref_logscore, "
    "steering_f1; why they differ from ours: docs/metrics_audit.md). r: Pearson correlation across every method run "
    "and seed here. A reference metric that tracks the raw Yes-shift (our raw_shift: the unsigned log-ratio slope) "
    "more than our side-balanced effect measures saying Yes, not the value."
)


def _powered_blocks(collected: pd.DataFrame, scores: pd.DataFrame, ds: str, tables: Path) -> list[tuple]:
    """The audit correlations and, per KL budget (or raw c), effects pooled over seeds with paired differences."""
    audit_t = audit_correlations(collected, ds)
    write_table(audit_t, tables / f"audit_{ds}")
    blocks: list[tuple] = [("h", "Audit of the published metrics", 3), ("p", AUDIT_NOTE), ("table", audit_t)]
    if not len(scores):
        return blocks
    budgets = kl_budget(collected)
    for kl in [None] * bool(budgets.isna().any()) + sorted(budgets.dropna().unique()):
        runs = collected[budgets.isna()] if kl is None else collected[budgets == kl]
        if not ((runs["dataset"] == ds) & runs["preset"].isna()).any():
            continue
        tag, title = ("", "raw c") if kl is None else (f"_kl{kl:g}", f"KL budget {kl:g}")
        pw = powered_table(runs, scores, ds)
        write_table(pw, tables / f"paired_{ds}{tag}")
        blocks += [("h", f"Pooled over seeds, paired against {steerers.with_role('method')} ({title})", 3),
                   ("p", "Effect: mean over seeds of the side-balanced effect, 95% CI from resampling dilemmas and "
                         "seeds; paired difference: the same resampled dilemmas for both methods. 'beats' only when "
                         "the paired CI excludes 0."), ("table", pw)]
    return blocks


def build_report(root: Path, out: Path) -> Path:
    """Write all tables, figures, report.md and a self-contained report.html under `out`; returns the HTML path."""
    out = Path(out)
    collected, failed = collect(root), collect_failed(root)
    scores = load_scores(root, sorted(collected.loc[collected["preset"].isna(), "run_hash"].unique()))  # Table-1 runs
    blocks: list[tuple] = [
        ("h", "innerpissa report", 1),
        ("p", f"Results root: {Path(root).resolve()} · generated {time.strftime('%Y-%m-%d %H:%M')} · "
              f"model {', '.join(map(str, collected['model'].unique()))} · concept {', '.join(map(str, collected['concept'].unique()))} · "
              f"{collected['run_hash'].nunique()} complete runs, {int((failed['status'] == 'failed').sum())} failed, "
              f"{int((failed['status'] == 'partial').sum())} partial (excluded)."),
        ("p", STATS_NOTE),
    ]
    for ds in _datasets(collected):
        blocks += _dataset_blocks(collected, scores, ds, out)
    if collected["preset"].isna().any() and len(scores) and (scores["coeff"] == -1).any():
        atg = against_the_grain(collected, scores)
        write_table(atg, out / "tables" / "against_the_grain")
        blocks += [("h", "Against the grain: c = −1 vs the dishonest prompt", 2),
                   ("p", "Label-signed log-ratio at c = −1 minus c = 0 per row, averaged over seeds; 95% CI over dilemmas. "
                         "Negative = pushed against the target label; the last column is the paired difference to the "
                         "prompt baseline (negative = further than the dishonest prompt)."), ("table", atg)]
    samples = samples_table(collected, load_samples(root, sorted(collected["run_hash"].unique())))
    if len(samples):
        write_table(samples, out / "tables" / "samples")
        blocks += [("h", "Steered generations at c = −1, 0, +1", 2), ("table", samples)]
    if len(failed):
        write_table(failed, out / "tables" / "failed_runs")
        blocks += [("h", "Failed and partial runs (excluded from every table)", 2), ("table", failed)]
    skipped = skipped_dirs(root)
    if len(skipped):
        write_table(skipped, out / "tables" / "skipped")
        blocks += [("h", "Other outputs under the root (not sweep/compare runs, not in this report)", 2), ("table", skipped)]
    atomic_write_text(out / "report.md", _md(blocks, out))
    atomic_write_text(out / "report.html", _html(blocks, "innerpissa report"))
    return out / "report.html"
