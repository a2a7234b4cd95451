"""Issue 9: pooled seeds, paired differences and selectivity on synthetic tables with known answers, and the
references' DailyDilemmas metrics (`ref_logscore`, `steering_f1`) against hand-computed values on 4-row tables."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from innerpissa.eval.metrics import (paired_difference, pooled_effect, ref_logscore, selectivity, signed_test,
                                     steering_f1)

COEFFS = (-1.0, 0.0, 1.0)


def _table(slopes, intercepts=None, dim="Value/honesty"):
    """Two rows per dilemma (to_do, not_to_do) at c = -1, 0, 1; dilemma d's honesty label is on to_do for even d,
    on not_to_do for odd d; the label-signed log-ratio of both its rows is slopes[d] * c + intercepts[d]."""
    intercepts = np.zeros(len(slopes)) if intercepts is None else intercepts
    rows = []
    for d, (b, a) in enumerate(zip(slopes, intercepts)):
        for side in ("to_do", "not_to_do"):
            label = 1.0 if (side == "to_do") == (d % 2 == 0) else -1.0
            for c in COEFFS:
                rows.append({"row_id": f"{d}-{side}", "dilemma_id": d, "side": side, "coeff": c,
                             "logratio": label * (b * c + a), "pmass": 0.9, f"label:{dim}": label})
    return pd.DataFrame(rows)


def test_paired_difference_recovers_a_known_difference_that_unpaired_cis_cannot_see():
    rng = np.random.default_rng(0)
    shared = rng.normal(0, 1.0, 40)                   # dilemma difficulty: both methods feel it
    a = _table(0.5 + shared + rng.normal(0, 0.01, 40))
    b = _table(0.2 + shared)
    r = paired_difference([a], [b], "Value/honesty", n_boot=500)
    assert r["diff"] == pytest.approx(0.3, abs=0.01) and r["n_dilemmas"] == 40
    assert r["ci_low"] < 0.3 < r["ci_high"] and r["ci_high"] - r["ci_low"] < 0.02
    alone = pooled_effect([a], "Value/honesty", n_boot=500)  # each method alone: the shared noise dominates
    assert alone["ci_high"] - alone["ci_low"] > 0.3


def test_paired_difference_ci_covers_the_true_difference_at_its_level():
    rng = np.random.default_rng(1)
    hits, widths = 0, []
    for _ in range(100):
        base = rng.normal(0.2, 1.0, 30)
        a, b = _table(base + 0.3 + rng.normal(0, 0.2, 30)), _table(base)
        r = paired_difference([a], [b], "Value/honesty", n_boot=300, seed=int(rng.integers(1 << 30)))
        hits += r["ci_low"] <= 0.3 <= r["ci_high"]
        widths.append(r["ci_high"] - r["ci_low"])
    assert 0.85 <= hits / 100 <= 1.0
    # the per-dilemma difference has SD 0.2 over 30 dilemmas in two strata: se = 0.2 / sqrt(30)
    assert np.median(widths) == pytest.approx(2 * 1.96 * 0.2 / math.sqrt(30), rel=0.25)


def test_pooled_effect_is_the_seed_mean_and_carries_the_seed_spread():
    slopes = np.random.default_rng(2).normal(0.1, 0.05, 30)
    seeds = [_table(slopes + off) for off in (0.0, 0.5, 1.0)]
    one = pooled_effect(seeds[:1], "Value/honesty")
    assert one["effect"] == pytest.approx(signed_test(seeds[0], "Value/honesty")["effect"])
    r = pooled_effect(seeds, "Value/honesty")
    assert r["effect"] == pytest.approx(one["effect"] + 0.5) and r["n_seeds"] == 3
    assert r["seed_sd"] == pytest.approx(0.5)
    assert r["ci_low"] < r["effect"] < r["ci_high"] and r["ci_high"] - r["ci_low"] > 0.4  # dilemma noise alone: ~0.04
    assert one["ci_high"] - one["ci_low"] < 0.1


def test_pooled_effect_of_a_pure_action_shift_is_zero():
    """A steerer that only pushes toward taking the action: logratio(to_do) up, logratio(not_to_do) down, no honesty."""
    t = _table(np.zeros(20))
    t["logratio"] = np.where(t["side"] == "to_do", 0.7, -0.7) * t["coeff"]
    assert pooled_effect([t], "Value/honesty")["effect"] == pytest.approx(0.0, abs=1e-12)


def test_selectivity_hand_value():
    effects = pd.DataFrame({"dim": ["Value/honesty", "A", "B", "C"], "effect": [0.5, 0.2, -0.4, np.nan]})
    assert selectivity(effects, "Value/honesty") == pytest.approx(0.5 - 0.1 * 0.3)
    assert np.isnan(selectivity(effects, "C"))


def _four_rows():
    """One dilemma, honesty on to_do; c = 0 and 1; logratio rises by 1 nat on BOTH rows: a pure Yes-shift."""
    return pd.DataFrame({
        "row_id": ["t", "n", "t", "n"], "dilemma_id": [0, 0, 0, 0], "side": ["to_do", "not_to_do"] * 2,
        "coeff": [0.0, 0.0, 1.0, 1.0], "logratio": [0.5, -0.5, 1.5, 0.5], "pmass": 0.9,
        "label:Value/honesty": [1.0, -1.0, 1.0, -1.0]})


def test_ref_logscore_hand_value_scores_a_yes_shift_as_honesty():
    # logscore = label * (-logratio on not_to_do): c=0: 0.5, -0.5; c=1: 1.5, 0.5 -> OLS slope 1, residual SD
    # sqrt(1/2), Sxx = 1 -> se = sqrt(1/2), t = sqrt(2)
    r = ref_logscore(_four_rows(), "Value/honesty")
    assert r["ref_logscore"] == pytest.approx(1.0)
    assert r["ref_logscore_t"] == pytest.approx(math.sqrt(2)) and r["ref_logscore_abs_t"] == pytest.approx(math.sqrt(2))
    assert r["ref_logscore_p"] == pytest.approx(1 - math.sqrt(2) / 2)  # Student t, 2 df: p = 1 - t / sqrt(2 + t^2)
    # our label-signed effect on the same rows: y = 0.5, 0.5 at c=0 and 1.5, -0.5 at c=1 -> slope 0
    t = _four_rows().assign(y=lambda d: d["label:Value/honesty"] * d["logratio"])
    assert t.groupby("coeff")["y"].mean().diff().iloc[-1] == pytest.approx(0.0)


def _f1_rows(flip=False):
    """4 questions at c = -1, 0, 1: rows A (to_do, +1) and B (not_to_do, -1) are target items, C and D carry no
    honesty label (arbitrary items); pmass 0.8 at c = 0 and 0.6 at c = ±1."""
    lr = {"A": (-1.0, -0.5, 1.0), "B": (-0.5, -1.0, -2.0), "C": (0.3, 0.2, -0.1), "D": (-0.2, -0.6, -0.3)}
    side = {"A": "to_do", "B": "not_to_do", "C": "", "D": ""}
    label = {"A": 1.0, "B": -1.0, "C": np.nan, "D": np.nan}
    rows = [{"row_id": q, "dilemma_id": q if q in "CD" else "AB", "side": side[q], "coeff": -c if flip else c,
             "logratio": v, "pmass": 0.8 if c == 0 else 0.6, "label:Value/honesty": label[q]}
            for q, vals in lr.items() for c, v in zip(COEFFS, vals)]
    return pd.DataFrame(rows)


def test_steering_f1_hand_value_and_its_sign_swap():
    # target y = label * (-1 on not_to_do) * logratio: A (-1, -0.5, 1), B (0.5, 1, 2); y0 = [-0.5, 1], SD 0.75,
    # weights [1/3, 2/3]; A is fixed by +1 (correct 1/3), B stays right (wrong 0) -> net = recall = 1/3.
    # arbitrary logratio: C (0.3, 0.2, -0.1) flips at +1, D never; a0 = [0.2, -0.6], SD 0.4, weights [1/4, 3/4]
    # -> arb = 1/4; precision = (1/3) / (1/3 + 1/4) = 4/7; F1 = 2PR/(P+R) = 8/19; pmass ratio (0.6/0.8)^2 = 9/16
    r = steering_f1(_f1_rows(), "Value/honesty")
    assert (r["recall"], r["arb_w"], r["precision"]) == pytest.approx((1 / 3, 1 / 4, 4 / 7), rel=1e-6)
    assert r["pmass_ratio"] == pytest.approx(9 / 16, rel=1e-6)
    assert r["steering_f1"] == pytest.approx(100 * 8 / 19 * 9 / 16, rel=1e-6)
    assert not r["swapped"] and (r["n_target"], r["n_arb"]) == (2, 2)
    # steering the other way (c -> -c) earns exactly the same credit: the metric swaps ±1 when +1 scores lower
    m = steering_f1(_f1_rows(flip=True), "Value/honesty")
    assert m["swapped"] and m["steering_f1"] == pytest.approx(r["steering_f1"])


def _runs(spec, dataset="dd-honesty"):
    """collected-like rows and concatenated scores for {method: [slope arrays per seed]}."""
    runs, scores = [], []
    for method, seeds in spec.items():
        for s, slopes in enumerate(seeds):
            h = f"{method}-{s}"
            runs.append({"run_hash": h, "method": method, "seed": s, "preset": None, "model": "m", "concept": "honesty",
                         "params_key": "{}", "dataset": dataset, "target_dim": "Value/honesty",
                         "kl_budget": 0.1, "coeff_pos": 2.0 + s, "coeff_neg": 3.0, "kl_pos": 0.1, "kl_neg": 0.1,
                         "control_score": 0.1 * s, "control_probe_score": 1.0 + s})
            scores.append(_table(slopes).assign(run_hash=h, dataset=dataset))
    return pd.DataFrame(runs), pd.concat(scores, ignore_index=True)


def test_powered_rows_pool_seeds_and_pair_against_the_reference():
    from innerpissa.experiments.tables import powered_rows, powered_table, quality_rows

    rng = np.random.default_rng(3)
    base = rng.normal(0.1, 1.0, 30)
    collected, scores = _runs({"innerpissa": [base + 0.3 + rng.normal(0, 0.02, 30) for _ in range(2)],
                               "random": [base + rng.normal(0, 0.02, 30) for _ in range(3)]})
    st = powered_rows(collected, scores, "dd-honesty", n_boot=300).set_index("label")
    assert st.loc["random", "n_seeds"] == 3 and st.loc["random", "coeff_pos"] == pytest.approx(3.0)
    assert st.loc["random", "vs_ref_diff"] == pytest.approx(-0.3, abs=0.03)
    assert st.loc["random", "vs_ref_ci_high"] < 0 and np.isnan(st.loc["innerpissa"].get("vs_ref_diff", np.nan))
    assert st.loc["random", "effect"] == pytest.approx(pooled_effect(
        [g for _, g in scores[scores["run_hash"].str.startswith("random")].groupby("run_hash")], "Value/honesty")["effect"])
    shown = powered_table(collected, scores, "dd-honesty", n_boot=300).set_index("Method")
    assert shown.loc["random", "vs innerpissa"] == "loses to"
    rows = {r["method"]: r for r in quality_rows(st.reset_index())}
    assert rows["innerpissa"]["paired_vs_innerpissa"] is None and rows["random"]["kl"] == pytest.approx(0.1)
    assert rows["random"]["paired_vs_innerpissa"]["diff"] == pytest.approx(st.loc["random", "vs_ref_diff"])
    # both positive controls are the seed means: random seeds 0, 1, 2 -> r 0.1, probe 2.0
    assert rows["random"]["positive_control"] == pytest.approx({"r": 0.1, "probe": 2.0})
    assert shown.loc["innerpissa", "control r / probe"] == "0.050 / 1.500"
    # the null band: the 3 random seeds' own effects, mean ± t(0.975, 2) · sd · sqrt(1 + 1/3), by hand
    own = np.array([pooled_effect([g], "Value/honesty")["effect"]
                    for _, g in scores[scores["run_hash"].str.startswith("random")].groupby("run_hash")])
    half = stats.t.ppf(0.975, 2) * own.std(ddof=1) * np.sqrt(1 + 1 / 3)
    assert (st.loc["random", "null_lo"], st.loc["random", "null_hi"]) == pytest.approx((own.mean() - half, own.mean() + half))
    assert st.loc["innerpissa", "vs_null"] == "above" and st.loc["random", "vs_null"] == "(the null)"
    assert rows["innerpissa"]["vs_random_null"]["verdict"] == "above" and rows["innerpissa"]["vs_random_null"]["null_n"] == 3
    assert shown.loc["random", "vs random null (95% PI)"].startswith("(the null: ")
    # shifted into the band, the same method reads "inside"; far below it, "below"
    for shift, verdict in ((0.0, "inside"), (-0.5, "below")):
        c2, s2 = _runs({"innerpissa": [base + shift + 0.5 * half * (-1) ** k for k in range(2)],
                        "random": [base + rng.normal(0, 0.02, 30) for _ in range(3)]})
        assert powered_rows(c2, s2, "dd-honesty", n_boot=50).set_index("label").loc["innerpissa", "vs_null"] == verdict


def test_audit_correlations_across_runs():
    from innerpissa.experiments.tables import audit_correlations

    raw = np.array([-1.5, -0.4, 0.1, 0.3, 1.2])
    collected = pd.DataFrame({"run_hash": list("abcde"), "method": ["pca", "random", "random", "lora", "innerpissa"],
                              "seed": [0, 0, 1, 0, 0], "preset": None, "model": "m", "concept": "honesty",
                              "params_key": "{}", "dataset": "dd-honesty", "raw_shift": raw,
                              "effect": [0.0, 0.1, -0.1, 0.05, 0.02], "ref_logscore": 0.75 * raw + 0.01,
                              "ref_logscore_abs_t": np.abs(raw) * 4, "steering_f1": np.abs(raw) * 10})
    st = audit_correlations(collected, "dd-honesty").attrs["stats"].set_index("metric")
    assert st.loc["ref_logscore", "corr_with_raw_shift"] == pytest.approx(1.0)
    assert st.loc["steering_f1", "corr_with_abs_raw_shift"] == pytest.approx(1.0)
    assert st.loc["ref_logscore", "n_runs"] == 5


def test_powered_forest_draws_every_budget_and_names_missing_columns(tmp_path):
    from innerpissa.experiments.figures import powered_forest
    from innerpissa.experiments.tables import powered_rows

    rng = np.random.default_rng(5)
    base = rng.normal(0.1, 1.0, 30)
    collected, scores = _runs({"innerpissa": [base + 0.3], "random": [base + rng.normal(0, 0.02, 30) for _ in range(3)]})
    st = powered_rows(collected, scores, "dd-honesty", n_boot=50)
    out = powered_forest({"0.1": st, "0.3": st}, tmp_path / "f.png", "t")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a method missing at one budget (a bench in progress) leaves a gap on the shared rows
    partial = powered_forest({"0.1": st, "0.3": st[st["label"] != "innerpissa"]}, tmp_path / "p.png")
    assert partial.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=r"budget 0.3 lacks \['null_hi', 'null_lo'\]"):
        powered_forest({"0.1": st, "0.3": st.drop(columns=["null_lo", "null_hi"])}, tmp_path / "g.png")
    assert not (tmp_path / "g.png").exists()
