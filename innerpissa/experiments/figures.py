"""Report figures (PNG, written atomically): Table-1 bar chart, the powered Table 1 against its random null,
dose-response, layer depth, side-effect heatmap, and each fit's loss curve.

Figures are drawn on `matplotlib.figure.Figure` (no pyplot state, no GUI backend). Every plotted number
carries its 95% CI (error bars or bands) and its n (seeds) in the legend or labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..io import atomic_write


def _save(fig: Figure, path: Path, rect: tuple[float, float, float, float] = (0, 0, 1, 1)) -> Path:
    fig.tight_layout(rect=rect)
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    return Path(path)


def _err(mean: pd.Series, lo: pd.Series, hi: pd.Series) -> np.ndarray:
    """Asymmetric error-bar lengths; 0 where the interval is unknown (or, as a percentile CI can, excludes the mean)."""
    return np.clip(np.nan_to_num(np.vstack([mean - lo, hi - mean]).astype(float), nan=0.0), 0.0, None)


def bar_chart(table1_df: pd.DataFrame, path: Path) -> Path:
    """Effect and Gain per method with 95% CIs (hatched: one seed or deterministic, CI within-run)."""
    st = table1_df.attrs.get("stats", table1_df)
    if "effect" not in st:
        raise ValueError("bar_chart needs the frame returned by tables.table1 (its numbers live in attrs['stats'])")
    fig = Figure(figsize=(10, 0.45 * len(st) + 1.6))
    y = np.arange(len(st))
    names = [f"{r.label} (n={r.n_seeds})" for r in st.itertuples()]
    hatch = ["//" if b != "seeds" else "" for b in st["effect_basis"]]
    for ax, m, title in zip(fig.subplots(1, 2, sharey=True), ("effect", "gain"), ("Effect (label-signed, per unit c)", "Gain")):
        bars = ax.barh(y, st[m].fillna(0), xerr=_err(st[m], st[f"{m}_lo"], st[f"{m}_hi"]), color="tab:blue", alpha=0.7, capsize=3)
        for b, h in zip(bars, hatch):
            b.set_hatch(h)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_title(f"{title}, mean ± 95% CI")
        ax.set_yticks(y, names)
    fig.axes[0].invert_yaxis()
    fig.suptitle("n = seeds; hatched: one seed or identical seeds (the run's own CI; no bar = no CI)", fontsize=9)
    return _save(fig, path)


def powered_forest(stats: dict[str, pd.DataFrame], path: Path, title: str = "") -> Path:
    """One panel per KL budget: each method's effect pooled over seeds with its 95% CI, over the grey 95% prediction
    interval of one random direction at that budget (the null), so "inside the null" is visible at a glance.

    `stats` maps a budget label to `tables.powered_rows` output (columns label, n_seeds, effect, ci_low, ci_high,
    null_lo, null_hi, null_n)."""
    need = {"label", "n_seeds", "effect", "ci_low", "ci_high", "null_lo", "null_hi", "null_n"}
    for budget, st in stats.items():
        if missing := need - set(st.columns):
            raise ValueError(f"powered_forest: budget {budget} lacks {sorted(missing)}; pass tables.powered_rows output")
    # one shared row per method, so a method missing at one budget leaves a gap instead of shifting the rows
    labels = list(dict.fromkeys(lab for st in stats.values() for lab in st["label"]))
    fig = Figure(figsize=(3.2 * len(stats) + 2.8, 0.32 * len(labels) + 2.2))
    axes = np.atleast_1d(fig.subplots(1, len(stats), sharex=True, sharey=True))
    y = np.arange(len(labels))
    for ax, (budget, st) in zip(axes, stats.items()):
        lo, hi, k = st["null_lo"].iloc[0], st["null_hi"].iloc[0], st["null_n"].iloc[0]
        if np.isfinite(lo) and np.isfinite(hi):
            ax.axvspan(lo, hi, color="0.85", label="random null: 95% PI of one more random direction")
        r = st.set_index("label").reindex(labels)
        ax.errorbar(r["effect"], y, xerr=_err(r["effect"], r["ci_low"], r["ci_high"]), fmt="o", color="tab:blue",
                    capsize=3, label="effect pooled over seeds, 95% CI (units × seeds)")
        ax.axvline(0, color="k", lw=0.8)
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.set(xlabel="effect per unit c (nats)", title=f"KL budget {budget} (null: {k:g} random seeds)")
    # seeds per budget; "2/3" when the budgets differ (a bench in progress), "–" where a budget lacks the method
    seeds = pd.DataFrame({b: st.set_index("label")["n_seeds"] for b, st in stats.items()}).reindex(labels)
    n_txt = ["/".join("–" if pd.isna(n) else str(int(n)) for n in row) if row.nunique(dropna=False) > 1 else str(int(row.iloc[0]))
             for _, row in seeds.iterrows()]
    axes[0].set_yticks(y, [f"{lab} (n={t})" for lab, t in zip(labels, n_txt)], fontsize=8)
    axes[0].set_ylim(len(labels) - 0.5, -0.5)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path, rect=(0, 0.07, 1, 1))


def dose_response_figure(curves: pd.DataFrame, path: Path, title: str = "") -> Path:
    """Label-signed effect and ΔNLL vs c, one line per method (curves from `report.dose_curves`), 95% CI bands."""
    fig = Figure(figsize=(10, 4))
    ax1, ax2 = fig.subplots(1, 2)
    for label, g in curves.groupby("label", sort=False):
        g = g.sort_values("coeff")
        name = f"{label} (n={int(g['n_seeds'].iloc[0])} seeds, {int(g['n_rows'].iloc[0])} rows)"
        (line,) = ax1.plot(g["coeff"], g["signed_mean"], marker="o", label=name)
        ax1.fill_between(g["coeff"], g["ci_low"], g["ci_high"], color=line.get_color(), alpha=0.15)
        ax2.plot(g["coeff"], g["dnll"], marker="o", color=line.get_color())
    ax1.set(xlabel="coefficient c", ylabel="label-signed log-ratio (mean, 95% CI)", title=f"Dose-response {title}")
    ax2.set(xlabel="coefficient c", ylabel="ΔNLL vs c = 0 (nats/token)", title="Coherence cost")
    for ax in (ax1, ax2):
        ax.axhline(0, color="k", lw=0.6)
        ax.axvline(0, color="k", lw=0.4, ls=":")
    ax1.legend(fontsize=7)
    return _save(fig, path)


def layer_depth_figure(depth: pd.DataFrame, path: Path, title: str = "") -> Path:
    """Effect and ΔNLL vs adapted depth fraction (depth presets), with the 'full' reference as a band."""
    fig = Figure(figsize=(10, 4))
    pts = depth[depth["preset"] != "full"].sort_values("value")
    full = depth[depth["preset"] == "full"]
    for ax, m, ylab in zip(fig.subplots(1, 2), ("effect", "dnll"), ("effect (mean, 95% CI)", "ΔNLL (mean, 95% CI)")):
        ax.errorbar(pts["value"], pts[m], yerr=_err(pts[m], pts[f"{m}_lo"], pts[f"{m}_hi"]), marker="o", capsize=3, label="depth presets")
        for r in pts.itertuples():
            ax.annotate(f"{r.preset} (n={r.n_seeds})", (r.value, getattr(r, m)), fontsize=6, rotation=30)
        if len(full):
            f = full.iloc[0]
            ax.axhline(f[m], color="tab:green", lw=1, label=f"full (n={f['n_seeds']})")
            if np.isfinite(f[f"{m}_lo"]):
                ax.axhspan(f[f"{m}_lo"], f[f"{m}_hi"], color="tab:green", alpha=0.12)
        ax.set(xlabel="depth fraction of the loss layer / top adapted layer (1.0 = last 3 layers)", ylabel=ylab)
        ax.legend(fontsize=7)
    fig.suptitle(f"Layer depth {title}")
    return _save(fig, path)


def side_effect_heatmap(effects: pd.DataFrame, path: Path, title: str = "") -> Path:
    """Methods × value dimensions heatmap of per-dim effects (rows/columns in the frame's order); '*' = significant."""
    rows, cols = list(dict.fromkeys(effects["label"])), list(dict.fromkeys(effects["dim"]))
    grid = effects.pivot(index="label", columns="dim", values="effect").reindex(index=rows, columns=cols)
    sig = effects.pivot(index="label", columns="dim", values="significant").reindex(index=rows, columns=cols).fillna(False)
    fig = Figure(figsize=(max(6, 0.35 * grid.shape[1] + 3), 0.5 * grid.shape[0] + 2.5))
    ax = fig.subplots()
    lim = float(np.nanmax(np.abs(grid.to_numpy()))) if np.isfinite(grid.to_numpy()).any() else 1.0
    im = ax.imshow(grid.to_numpy(float), cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    for (i, j), s in np.ndenumerate(sig.to_numpy(bool)):
        if s:
            ax.text(j, i, "*", ha="center", va="center", fontsize=9)
    ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=90, fontsize=7)
    ax.set_yticks(range(grid.shape[0]), [f"{lab} (n={effects.loc[effects['label'] == lab, 'n_seeds'].iloc[0]} seeds)" for lab in grid.index])
    fig.colorbar(im, ax=ax, label="effect per unit c (label-signed)")
    ax.set_title(f"Effects across value dimensions {title}\n* = significant after BH-FDR (q < 0.05); first column = target")
    return _save(fig, path)


LOSS_TERMS = {"sep_pos": ("C0", "-"), "sep_neg": ("C0", "--"), "coh_pos": ("C1", "-"), "coh_neg": ("C1", "--"),
              "mono": ("C2", ":")}  # colour per term family, solid for c = +1, dashed for c = -1


def loss_term_groups(history: pd.DataFrame) -> list[list[str]]:
    """The logged loss terms to draw, terms with identical values merged into one group (e.g. the antiparallel
    separation logs one shared term as sep_pos = sep_neg), so no curve hides another."""
    groups: list[list[str]] = []
    for k in (k for k in LOSS_TERMS if k in history):
        same = next((g for g in groups if np.array_equal(history[g[0]].to_numpy(float), history[k].to_numpy(float),
                                                       equal_nan=True)), None)
        if same is None:
            groups.append([k])
        else:
            same.append(k)
    return groups


def warmup_steps(history: pd.DataFrame) -> int | None:
    """Last optimizer step of the constraint warm-up (the coherence and monotonic weights ramp from 0 to 1, logged
    as `ramp`), or None when the history logs no ramp or it never ramps."""
    if "ramp" not in history or not (history["ramp"] < 1).any():
        return None
    return int(history.loc[history["ramp"] < 1, "step"].max())


def loss_curve(history: list[dict], path: Path) -> Path:
    """Training curve of one fit: each loss term per step (left) and total train vs validation loss (right).

    The constraint warm-up is shaded: while its weights ramp in, the total loss climbs by construction (it is
    not diverging). Terms with equal values are drawn once, labelled with every name they carry."""
    df = pd.DataFrame(history)
    fig = Figure(figsize=(10, 5))
    ax_terms, ax_total = fig.subplots(1, 2)
    for group in loss_term_groups(df):
        color, style = LOSS_TERMS[group[0]]
        zero = bool((df[group[0]] == 0).all())
        ax_terms.plot(df["step"], df[group[0]], color=color, ls=style, lw=1.2,
                      label=" = ".join(group) + (" = 0 throughout" if zero else ""))
    ax_terms.set(xlabel="optimizer step", ylabel="term value (unweighted)", title="loss terms (train)")
    ax_total.plot(df["step"], df["loss"], label="train loss", lw=1, alpha=0.7)
    if "val_loss" in df:
        val = df.dropna(subset=["val_loss"])
        ax_total.plot(val["step"], val["val_loss"], "o-", label="validation loss")
    ax_total.set(xlabel="optimizer step", ylabel="total loss", title="train vs validation")
    end = warmup_steps(df)
    if end is not None:
        for ax in (ax_terms, ax_total):
            ax.axvspan(df["step"].min() - 0.5, end + 0.5, color="0.9", zorder=0, label=None if ax is ax_terms else
                       f"constraint warm-up (steps ≤ {end}): weights ramp 0 → 1, the total rises by design")
    for ax in (ax_terms, ax_total):  # below the axes: a legend inside would cover the curves
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    return _save(fig, path)
