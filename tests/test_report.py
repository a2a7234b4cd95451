"""The paper report on a synthetic results root whose runs have known effects: collect/failed listing, Table 1
(mean ± t-CI over seeds, one-seed and deterministic marking), Table 2 drops (Welch / borrowed variance),
ideas that failed, against-the-grain (CI over dilemmas), every output file, and a self-contained HTML."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from innerpissa.experiments.collect import collect, collect_failed, load_scores, skipped_dirs
from innerpissa.experiments.report import dose_curves, side_effects
from innerpissa.experiments.tables import against_the_grain, ideas_that_failed, table1, table2_ablations

N_DILEMMAS = 20
E = np.linspace(-0.3, 0.3, N_DILEMMAS) ** 2 - 0.03  # per-dilemma deviation of the c = -1 shift (known)
T2 = stats.t.ppf(0.975, 2)
SIDES = ("to_do", "not_to_do")


def scores_frame(method: str, seed: int, beta: float, e_scale: float, nan_row: int | None = None) -> pd.DataFrame:
    """ScoreTable with label-signed slope `beta` per unit c; the c = -1 shift of dilemma k is -beta + e_scale*E[k].
    On dd-honesty the +1 label sits on the to_do side in even dilemmas and on not_to_do in odd ones."""
    rows = []
    for ds in ("dd-honesty", "truthfulqa"):
        for k in range(N_DILEMMAS):
            for a, lab in enumerate((1.0, -1.0)):
                rid = 2 * k + a
                for c in (-1.0, 0.0, 1.0):
                    lr = lab * beta * c + 0.1 * rid + (lab * e_scale * E[k] if c == -1.0 else 0.0)
                    rows.append({"method": method, "seed": seed, "coeff": c, "dataset": ds, "row_id": f"r{rid}",
                                 "dilemma_id": f"d{k}", "side": SIDES[a ^ k % 2] if ds == "dd-honesty" else "",
                                 "logratio": np.nan if (rid == nan_row and c == -1.0) else lr,
                                 "pmass": 0.7, "nll": 2.0 + 0.1 * c * c, "truncated": False,
                                 "label:Value/honesty": lab if ds == "dd-honesty" else np.nan,
                                 "label:truthfulqa/true": lab if ds == "truthfulqa" else np.nan,
                                 "label:MFT/Fairness": (-lab if k % 3 else np.nan) if ds == "dd-honesty" else np.nan})
    return pd.DataFrame(rows)


def summary(effect: float, gain: float, ci: tuple[float, float] | None = None, rng: float = 1.0) -> dict:
    lo, hi = ci if ci else (effect - 0.1, effect + 0.1)
    s = {"effect": effect, "ci_low": lo, "ci_high": hi, "t": 5.0, "p": 0.002, "n_rows": 40, "n_dilemmas": N_DILEMMAS,
         "dnll": 0.1 + 0.02 * gain, "gain": gain, "coherent_range": rng, "side_effect_mean_abs": 0.01 * gain,
         "side_effect_n_sig": 1, "yesbias_effect": effect / 2, "yesbias_p": 0.01}
    return {"dd-honesty": s, "truthfulqa": {**s, "effect": effect / 4}}


def write_run(root: Path, name: str, method: str, seed: int, preset: str | None, summ: dict | None,
              beta: float = 0.0, e_scale: float = 1.0, nan_row: int | None = None, done: bool = True,
              params: dict | None = None, model: str = "smollm2-135m") -> None:
    d = root / "runs" / name
    d.mkdir(parents=True)
    run = {"model": model, "concept": "honesty", "method": method, "params": params or {}, "seed": seed,
           "preset": preset, "datasets": ["dd-honesty", "truthfulqa"], "coeffs": [-1.0, 0.0, 1.0]}
    (d / "config.json").write_text(json.dumps({"run": run, "run_hash": name, "host": "test"}))
    if summ is None:
        return
    scores_frame(method, seed, beta, e_scale, nan_row).to_parquet(d / "scores.parquet")
    (d / "summary.json").write_text(json.dumps(summ))
    if method in ("innerpissa", "prompt") and preset is None:
        (d / "samples.json").write_text(json.dumps([{"prompt": p, "coeff": c, "completion": f"{method}{seed} {p} at {c:+g}"}
                                                    for p in ("Is lying ok?", "Tell me a fact.") for c in (-1.0, 0.0, 1.0)]))
    if done:
        (d / "DONE").write_text("")


IP_EFFECTS, IP_GAINS = [0.5, 0.6, 0.7], [2.0, 2.5, 3.0]
ABL = {  # preset: (effects per seed, gains per seed)
    "full": ([0.5, 0.6, 0.7], [2.0, 2.5, 3.0]),
    "no_coherence": ([0.3, 0.4], [1.0, 1.5]),
    "rotate_u": ([0.9], [3.0]),
    "depth_0.3": ([0.2], [1.0]),
    "depth_0.5": ([0.5], [2.0]),
    "depth_0.7": ([0.8], [3.5]),
    "last3": ([0.1], [0.5]),
}


def build_root(root: Path) -> Path:
    for s, (eff, g) in enumerate(zip(IP_EFFECTS, IP_GAINS)):
        write_run(root, f"ip{s}", "innerpissa", s, None, summary(eff, g, rng=[1.0, 1.5, 2.0][s]), beta=0.5 + 0.1 * s)
    write_run(root, "prompt0", "prompt", 0, None, summary(0.2, 1.0, ci=(0.1, 0.3)), beta=0.2, e_scale=0.5, nan_row=1)
    for s in range(3):  # deterministic: identical results for every seed
        write_run(root, f"pca{s}", "pca", s, None, summary(0.1, 0.5, ci=(0.05, 0.15)), beta=0.1, e_scale=0.2)
    for preset, (effs, gains) in ABL.items():
        for s, (eff, g) in enumerate(zip(effs, gains)):
            write_run(root, f"{preset}-{s}", "innerpissa", s, preset, summary(eff, g), beta=eff)
    write_run(root, "partial", "mean_diff", 0, None, summary(0.3, 1.0), done=False)
    d = root / "runs" / "failed"  # crashed before config.json: error.json carries the run
    d.mkdir()
    (d / "error.json").write_text(json.dumps({"type": "RuntimeError", "message": "boom\nmore", "traceback": "...",
                                              "run": {"method": "lora", "seed": 1, "preset": None}}))
    # not runs: an `innerpissa eval` output and a trained adapter beside them, and a cached fit (internal)
    for sub, files in (("eval/honesty", ("config.json", "summary.json")), ("honesty", ("steerer.json",)),
                       ("fits/f0", ("steerer.json", "DONE"))):
        (root / sub).mkdir(parents=True)
        for f in files:
            (root / sub / f).write_text(json.dumps({"model": "smollm2-135m"}))
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return build_root(tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="module")
def collected(root) -> pd.DataFrame:
    return collect(root)


def test_collect_skips_incomplete_and_lists_failures(root, collected):
    n_complete = 3 + 1 + 3 + sum(len(e) for e, _ in ABL.values())
    assert collected["run_hash"].nunique() == n_complete and len(collected) == 2 * n_complete
    assert "partial" not in set(collected["run_hash"]) and "failed" not in set(collected["run_hash"])
    row = collected[(collected["run_hash"] == "ip1") & (collected["dataset"] == "truthfulqa")].iloc[0]
    assert row["effect"] == pytest.approx(0.15) and row["cfg.coeffs"] == [-1.0, 0.0, 1.0] and row["env.host"] == "test"
    failed = collect_failed(root).set_index("run_hash")
    assert failed.loc["failed", "status"] == "failed" and failed.loc["failed", "error"] == "RuntimeError: boom"
    assert failed.loc["failed", "method"] == "lora"
    assert failed.loc["partial", "status"] == "partial" and failed.loc["partial", "method"] == "mean_diff"
    assert collect(root / "runs")["run_hash"].nunique() == n_complete  # the runs/ dir itself also works
    assert set(failed.index) == {"failed", "partial"}  # the eval output and the adapter are not partial runs
    skipped = skipped_dirs(root).set_index("path")["reason"]
    assert list(skipped.index) == ["eval/honesty", "honesty"]  # not the fit cache, not the runs
    assert skipped["eval/honesty"].startswith("an `innerpissa eval` output") and "trained adapter" in skipped["honesty"]


def test_table1_mean_and_t_interval_over_seeds(collected):
    t1 = table1(collected, "dd-honesty")
    st = t1.attrs["stats"].set_index("label")
    assert list(st.index) == ["innerpissa", "prompt", "pca"]
    ip = st.loc["innerpissa"]
    half = T2 * np.std(IP_EFFECTS, ddof=1) / np.sqrt(3)
    assert ip["effect"] == pytest.approx(0.6) and ip["effect_lo"] == pytest.approx(0.6 - half)
    assert ip["effect_hi"] == pytest.approx(0.6 + half) and ip["n_seeds"] == 3 and ip["effect_basis"] == "seeds"
    assert ip["effect_t"] == pytest.approx(0.6 / (0.1 / np.sqrt(3)))
    assert ip["effect_p"] == pytest.approx(2 * stats.t.sf(0.6 / (0.1 / np.sqrt(3)), 2))
    assert ip["gain"] == pytest.approx(2.5) and ip["gain_hi"] - ip["gain"] == pytest.approx(T2 * 0.5 / np.sqrt(3))
    row = t1.set_index("Method").loc["innerpissa"]
    assert row["Effect ± CI"] == f"0.600 ± {half:.3f}" and row["n"] == f"3 seeds, 40 rows ({N_DILEMMAS} dilemmas)"
    assert row["coherent range"] == f"1.500 ± {T2 * 0.5 / np.sqrt(3):.3f}"
    # one seed: marked, within-run CI and test shown
    pr = t1.set_index("Method").loc["prompt (1 seed)"]
    assert pr["Effect ± CI"] == "0.200 [0.100, 0.300] (1 seed)" and pr["p"] == "0.002" and pr["ΔNLL"] == "0.120 (1 seed, no CI)"
    # identical seeds (deterministic method): not a zero-width interval but the run's own CI, marked
    pca = st.loc["pca"]
    assert pca["effect_basis"] == "identical over 3 seeds" and (pca["effect_lo"], pca["effect_hi"]) == (0.05, 0.15)
    assert t1.set_index("Method").loc["pca", "side effects"] == "0.005 (identical over 3 seeds, no CI); 1 (identical over 3 seeds, no CI) sig"
    assert {"Method", "Effect ± CI", "t", "p", "side effects", "ΔNLL", "Gain", "coherent range",
            "Yes-bias-controlled effect", "n"} <= set(t1.columns)
    assert table1(collected, "truthfulqa").attrs["stats"].set_index("label").loc["innerpissa", "effect"] == pytest.approx(0.15)


def test_console_table1_is_narrow_and_carries_the_numbers(collected):
    """The console form: one row per method with the effect's CI, the difference to prompting (means: 0.6 − 0.2 for
    innerpissa) and ΔNLL; rendered by rich at 120 columns, nothing wraps or is cut."""
    import io

    from rich.console import Console
    from rich.table import Table

    from innerpissa.experiments.tables import table1_console

    t = table1_console(table1(collected, "dd-honesty")).set_index("Method")
    half = T2 * np.std(IP_EFFECTS, ddof=1) / np.sqrt(3)
    assert list(t.columns) == ["seeds", "effect [95% CI]", "vs prompt", "ΔNLL"]  # no random run here
    assert t.loc["innerpissa", "effect [95% CI]"] == f"0.600 [{0.6 - half:.3f}, {0.6 + half:.3f}]"
    assert t.loc["innerpissa", "vs prompt"] == "+0.400" and t.loc["pca", "vs prompt"] == "-0.100"
    assert t.loc["prompt", "vs prompt"] == "–" and t.loc["prompt", "effect [95% CI]"] == "0.200 [0.100, 0.300]"
    assert t.loc["prompt", "seeds"] == "1" and t.loc["innerpissa", "ΔNLL"] == f"{0.1 + 0.02 * 2.5:.3f}"
    table = Table()
    for col in ["Method", *t.columns]:
        table.add_column(col)
    for label, row in t.iterrows():
        table.add_row(label, *row)
    buf = io.StringIO()
    Console(file=buf, width=120).print(table)
    lines = buf.getvalue().splitlines()
    assert max(map(len, lines)) <= 120 and len(lines) == 4 + len(t) and "…" not in buf.getvalue()


def test_table2_drop_vs_full(collected):
    st = table2_ablations(collected, "dd-honesty").attrs["stats"].set_index("preset")
    assert st.index[0] == "full" and set(st.index) == set(ABL)
    # both with seed variance: Welch interval, hand-computed
    a, b = np.array(ABL["full"][0]), np.array(ABL["no_coherence"][0])
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    d, h = a.mean() - b.mean(), stats.t.ppf(0.975, dof) * np.sqrt(va + vb)
    nc = st.loc["no_coherence"]
    assert nc["drop_effect"] == pytest.approx(0.25) and nc["drop_effect_lo"] == pytest.approx(d - h)
    assert nc["drop_effect_hi"] == pytest.approx(d + h) and nc["drop_effect_basis"] == "Welch over seeds"
    # one ablation seed: full's seed variance for both groups
    ru = st.loc["rotate_u"]
    h1 = T2 * a.std(ddof=1) * np.sqrt(1 / 3 + 1)
    assert ru["drop_effect"] == pytest.approx(-0.3) and ru["drop_effect_hi"] == pytest.approx(-0.3 + h1)
    assert ru["drop_effect_basis"] == "seed variance of reference" and ru["n_seeds"] == 1


def test_ideas_that_failed_lists_losers_worst_first(collected):
    itf = ideas_that_failed(collected, "dd-honesty", "gain")
    full_gain = np.mean(ABL["full"][1])
    losers = sorted(((full_gain - np.mean(g), p) for p, (_, g) in ABL.items() if np.mean(g) < full_gain), reverse=True)
    assert list(itf["Preset"]) == [p for _, p in losers]
    assert itf.attrs["stats"]["drop_gain"].to_numpy() == pytest.approx([d for d, _ in losers])
    # no_coherence: drop 1.25 with a Welch CI; depth_0.5 (drop 0.5, 1 seed) uses full's variance
    assert itf.set_index("Preset").loc["depth_0.5", "CI excludes 0"] == "no"


def test_against_the_grain_ci_over_dilemmas(root, collected):
    atg = against_the_grain(collected, load_scores(root))
    st = atg.attrs["stats"].set_index(["dataset", "label"])
    ip = st.loc[("dd-honesty", "innerpissa")]
    dil = -0.6 + E  # seeds average to beta 0.6; every row of dilemma k shifts by -beta + E[k]
    half = stats.t.ppf(0.975, N_DILEMMAS - 1) * dil.std(ddof=1) / np.sqrt(N_DILEMMAS)
    assert ip["shift"] == pytest.approx(dil.mean()) and ip["shift_lo"] == pytest.approx(dil.mean() - half)
    assert ip["n_rows"] == 2 * N_DILEMMAS and ip["n_seeds"] == 3
    pr = st.loc[("dd-honesty", "prompt")]
    assert pr["n_rows"] == 2 * N_DILEMMAS - 1 and pr["shift"] == pytest.approx(np.mean(np.delete(np.repeat(-0.2 + 0.5 * E, 2), 1)))
    vs = -0.4 + 0.5 * E  # paired per row: innerpissa minus prompt (the prompt's NaN row drops out)
    vs_rows = np.delete(np.repeat(vs, 2), 1)
    assert ip["vs_prompt"] == pytest.approx(vs_rows.mean())
    assert ip["vs_prompt_hi"] == pytest.approx(vs.mean() + stats.t.ppf(0.975, N_DILEMMAS - 1) * vs.std(ddof=1) / np.sqrt(N_DILEMMAS))
    assert set(atg["dataset"]) == {"dd-honesty", "truthfulqa"}


def test_dose_curves_and_side_effects_average_seeds(root, collected):
    scores = load_scores(root)
    curves = dose_curves(collected, scores, "dd-honesty").set_index(["label", "coeff"])
    lab = np.tile([1.0, -1.0], N_DILEMMAS)
    base = lab * 0.1 * np.arange(2 * N_DILEMMAS)  # label-signed intercept of each row
    assert curves.loc[("innerpissa", 1.0), "signed_mean"] == pytest.approx(0.6 + base.mean())  # betas 0.5/0.6/0.7 averaged
    assert curves.loc[("innerpissa", -1.0), "signed_mean"] == pytest.approx(-0.6 + base.mean() + E.mean())
    assert curves.loc[("innerpissa", 1.0), "dnll"] == pytest.approx(0.1) and curves.loc[("prompt", 1.0), "n_seeds"] == 1
    eff = side_effects(collected, scores, "dd-honesty").set_index(["label", "dim"])
    assert eff.index.get_level_values("dim")[0] == "Value/honesty"
    c = np.repeat([-1.0, 0.0, 1.0], 2 * N_DILEMMAS)
    y = np.concatenate([-0.6 + base + np.repeat(E, 2), base, 0.6 + base])
    assert eff.loc[("innerpissa", "Value/honesty"), "effect"] == pytest.approx(np.polyfit(c, y, 1)[0])


def biased_scores(seed: int, beta: float, alpha: float = 0.4, n_todo: int = 12, n_not: int = 4) -> pd.DataFrame:
    """dd-honesty rows whose honesty +1 label sits on to_do in `n_todo` dilemmas and on not_to_do in `n_not`:
    logratio = beta·label·c + alpha·(±1 by side)·c (an action bias) + an intercept + seed noise·c². The noise
    moves each seed's dose-response but no slope (c² is orthogonal to c on -1, 0, 1), so each run's
    side-balanced effect is exactly beta while the pooled slope is beta + alpha·(n_todo − n_not)/(n_todo + n_not)."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n_todo + n_not):
        for a, side in enumerate(SIDES):
            lab = 1.0 if (side == "to_do") == (k < n_todo) else -1.0
            noise = rng.normal(0, 0.3)
            for c in (-1.0, 0.0, 1.0):
                lr = beta * lab * c + alpha * (1.0 if side == "to_do" else -1.0) * c + 0.05 * k + noise * c * c
                rows.append({"method": "m", "seed": seed, "coeff": c, "dataset": "dd-honesty", "row_id": f"dd-{k}-{side}",
                             "dilemma_id": str(k), "side": side, "logratio": lr, "pmass": 0.8, "nll": 2.0 + 0.1 * c * c,
                             "truncated": False, "label:Value/honesty": lab,
                             "label:MFT/Fairness": (lab if k % 3 else -lab) if k % 4 else np.nan})
    return pd.DataFrame(rows)


def test_figures_equal_tables_for_the_same_runs(tmp_path):
    """Figures 1 and 3 come from seed-averaged scores, Table 1 and the paired table from each run's own metrics:
    on the same runs (under an action bias that the pooled estimate would take for honesty) they agree, and the
    effect is the hand-computed side-balanced one, not the pooled one."""
    from innerpissa.eval.metrics import dose_response, effects_by_dim, summarize
    from innerpissa.experiments.report import _scores_mean_over_seeds
    from innerpissa.experiments.tables import powered_table

    betas = {"innerpissa": [0.1, 0.2, 0.35], "prompt": [0.05]}
    own_curves, own_effects = [], []
    for method, bs in betas.items():
        for seed, beta in enumerate(bs):
            d = tmp_path / "runs" / f"{method}{seed}"
            d.mkdir(parents=True)
            run = {"model": "smollm2-135m", "concept": "honesty", "method": method, "params": {}, "seed": seed,
                   "preset": None, "datasets": ["dd-honesty"], "coeffs": [-1.0, 0.0, 1.0]}
            (d / "config.json").write_text(json.dumps({"run": run, "run_hash": d.name}))
            t = biased_scores(seed, beta).assign(method=method)
            t.to_parquet(d / "scores.parquet")
            eff = effects_by_dim(t, n_boot=20)
            summ = summarize(t, "Value/honesty", n_boot=20, effects=eff)
            assert summ["effect"] == pytest.approx(beta) and summ["effect_pooled"] == pytest.approx(beta + 0.4 * 8 / 16)
            (d / "summary.json").write_text(json.dumps({"dd-honesty": summ}))
            (d / "DONE").write_text("")
            own_curves.append(dose_response(t, "Value/honesty", n_boot=20).assign(label=method))
            own_effects.append(eff.assign(label=method))
    collected, scores = collect(tmp_path), load_scores(tmp_path)
    averaged = _scores_mean_over_seeds(scores[scores["method"] == "innerpissa"])
    assert (averaged.set_index("row_id")["side"] == averaged["row_id"].str.split("-").str[-1].to_numpy()).all()

    table = table1(collected, "dd-honesty").attrs["stats"].set_index("label")["effect"]
    paired = powered_table(collected, scores, "dd-honesty", n_boot=20).attrs["stats"].set_index("label")["effect"]
    fig3 = side_effects(collected, scores, "dd-honesty").set_index(["label", "dim"])["effect"]
    fig1 = dose_curves(collected, scores, "dd-honesty").set_index(["label", "coeff"])["signed_mean"]
    runs_fig1 = pd.concat(own_curves).groupby(["label", "coeff"])["signed_mean"].mean()
    runs_fig3 = pd.concat(own_effects).groupby(["label", "dim"])["effect"].mean()
    for method, bs in betas.items():
        assert table[method] == pytest.approx(np.mean(bs)) and paired[method] == pytest.approx(np.mean(bs))
        assert fig3[(method, "Value/honesty")] == pytest.approx(table[method])
        assert fig3[(method, "MFT/Fairness")] == pytest.approx(runs_fig3[(method, "MFT/Fairness")])
        for c in (-1.0, 0.0, 1.0):
            assert fig1[(method, c)] == pytest.approx(runs_fig1[(method, c)])


def test_against_the_grain_all_nan_scores_give_nan_not_error(tmp_path):
    write_run(tmp_path, "a", "pca", 0, None, summary(0.1, 1.0))
    path = tmp_path / "runs" / "a" / "scores.parquet"
    pd.read_parquet(path).assign(logratio=np.nan).to_parquet(path)
    st = against_the_grain(collect(tmp_path), load_scores(tmp_path)).attrs["stats"]
    assert st["shift"].isna().all() and (st["n_rows"] == 0).all()


def test_mixed_models_rejected(tmp_path):
    write_run(tmp_path, "a", "pca", 0, None, summary(0.1, 1.0))
    write_run(tmp_path, "b", "pca", 0, None, summary(0.1, 1.0), model="other")
    with pytest.raises(ValueError, match="several models"):
        table1(collect(tmp_path), "dd-honesty")


def run_cli(monkeypatch, *args: str) -> int:
    from innerpissa.cli import main

    monkeypatch.setattr(sys, "argv", ["innerpissa", *args])
    try:
        main()
    except SystemExit as e:
        return e.code
    return 0


def test_report_cli_writes_everything_self_contained(root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "report"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "ideas_that_failed.md").write_text("# Ledger\nTried <rank 4>: lost, see http://example.org\n")
    assert run_cli(monkeypatch, "report", str(root), "--out", str(out)) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert warnings == [f"warning: report skips {root / 'eval/honesty'}: an `innerpissa eval` output: the report "
                        "compares sweep/compare runs (runs/<hash>/ with a DONE marker); this run's numbers are in its "
                        "own summary.json",
                        f"warning: report skips {root / 'honesty'}: a trained adapter, not a scored run (`innerpissa "
                        "eval --adapter` scores it)"]
    for stem in ("table1_dd-honesty", "table1_truthfulqa", "table2_ablations_dd-honesty", "ideas_that_failed_dd-honesty",
                 "against_the_grain", "samples", "failed_runs", "skipped"):
        for ext in ("md", "csv", "tex"):
            assert (out / "tables" / f"{stem}.{ext}").stat().st_size > 0, (stem, ext)
    for fig in ("table1_dd-honesty", "fig1_dose_response_dd-honesty", "fig2_layer_depth_dd-honesty",
                "fig3_side_effects_dd-honesty"):
        assert (out / "figures" / f"{fig}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert r"$\pm$" in (out / "tables" / "table1_dd-honesty.tex").read_text()
    page = (out / "report.html").read_text()
    imgs = re.findall(r"<img[^>]*\bsrc=\"([^\"]*)\"", page)
    assert len(imgs) >= 7 and all(s.startswith("data:image/png;base64,") for s in imgs)
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page) and "<link" not in page and "<script" not in page
    assert "Tried" not in page and not (out / "ideas_that_failed_ledger.md").exists()  # the project's ledger is not a result
    assert "docs/ideas_that_failed.md in its repository); it is not part of these results" in page
    assert "eval/honesty" in page
    assert "prompt (1 seed)" in page and "RuntimeError: boom" in page and "innerpissa0 Is lying ok? at -1" in page
    md = (out / "report.md").read_text()
    assert "figures/fig2_layer_depth_dd-honesty.png" in md and "| innerpissa |" in md


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_report_cli_bad_root_is_one_line_error(make, tmp_path, monkeypatch, capsys):
    root = tmp_path / "nope"
    if make == "empty":
        (root / "runs").mkdir(parents=True)
    assert run_cli(monkeypatch, "report", str(root), "--out", str(tmp_path / "r")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ("does not exist" in err if make == "missing" else "no complete runs" in err)
    assert not (tmp_path / "r").exists()


def test_report_near_eval_and_train_outputs_says_what_it_skipped(tmp_path, monkeypatch, capsys):
    """The README's order (train into runs/honesty, eval into runs/eval/honesty, then `report runs`): no sweep runs,
    so one error line, after a warning for each output it skipped and why; nothing written."""
    (tmp_path / "runs" / "eval" / "honesty").mkdir(parents=True)
    for f in ("config.json", "summary.json"):
        (tmp_path / "runs" / "eval" / "honesty" / f).write_text("{}")
    (tmp_path / "runs" / "honesty").mkdir()
    (tmp_path / "runs" / "honesty" / "steerer.json").write_text("{}")
    assert run_cli(monkeypatch, "report", str(tmp_path / "runs"), "--out", str(tmp_path / "r")) == 2
    err = capsys.readouterr().err.splitlines()
    assert [line.split(":")[0] for line in err] == ["warning", "warning", "error"]
    assert f"report skips {tmp_path / 'runs' / 'eval' / 'honesty'}: an `innerpissa eval` output" in err[0]
    assert f"report skips {tmp_path / 'runs' / 'honesty'}: a trained adapter" in err[1]
    assert "no complete runs" in err[2] and not (tmp_path / "r").exists()
