"""Metrics on synthetic ScoreTables with known answers, and against independent implementations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats

from innerpissa.eval.metrics import action_bias, coherent_range, dose_response, effects_by_dim, slope_test, summarize

C3 = (-1.0, 0.0, 1.0)


def table(records: list[dict]) -> pd.DataFrame:
    """A ScoreTable slice from records (row_id, dilemma_id, coeff, logratio, label:*; pmass/nll default)."""
    df = pd.DataFrame(records)
    df.insert(0, "method", "m")
    df.insert(1, "seed", 0)
    df.insert(2, "dataset", "d")
    for col, default in (("pmass", 0.9), ("nll", 1.0)):
        if col not in df:
            df[col] = default
    return df


def paired(n_dilemmas: int, fn, coeffs=C3, dims=("t",), seed: int = 0) -> pd.DataFrame:
    """n dilemmas x 2 rows (labels +1/-1 for every dim); logratio = fn(label, c, dilemma, row, rng)."""
    rng = np.random.default_rng(seed)
    recs = []
    for d in range(n_dilemmas):
        for k, lab in enumerate((1.0, -1.0)):
            for c in coeffs:
                recs.append({"row_id": f"{d}-{k}", "dilemma_id": str(d), "coeff": c,
                             "logratio": fn(lab, c, d, k, rng), **{f"label:{x}": lab for x in dims}})
    return table(recs)


def test_effect_matches_linregress_and_cluster_se() -> None:
    u = np.random.default_rng(1).normal(size=40)
    t = paired(40, lambda lab, c, d, k, rng: lab * (0.7 * c + u[d] + rng.normal()))
    e = effects_by_dim(t, n_boot=4000, seed=0).set_index("dim").loc["t"]
    y = t["label:t"] * t["logratio"]
    assert e["effect"] == pytest.approx(stats.linregress(t["coeff"], y).slope, abs=1e-12)
    fit = sm.OLS(y.to_numpy(), sm.add_constant(t["coeff"].to_numpy())).fit(
        cov_type="cluster", cov_kwds={"groups": t["dilemma_id"].astype(int).to_numpy()})
    assert e["se"] == pytest.approx(fit.bse[1], rel=0.2)  # bootstrap over dilemmas ~ cluster-robust SE
    assert e["t"] == pytest.approx(e["effect"] / e["se"])
    assert e["p"] == pytest.approx(2 * stats.t.sf(abs(e["t"]), 39))
    assert e["ci_low"] < e["effect"] < e["ci_high"]
    assert (e["ci_high"] - e["ci_low"]) == pytest.approx(2 * 1.96 * e["se"], rel=0.25)
    assert (e["n_rows"], e["n_dilemmas"]) == (80, 40)


def test_balanced_design_recovers_slope_exactly() -> None:
    # y = label * logratio = 2c + per-dilemma offset + per-row offset: OLS over a full c grid gives exactly 2
    t = paired(10, lambda lab, c, d, k, rng: lab * (2 * c + d) + 0.3 * k)
    s = slope_test(t["coeff"], t["label:t"] * t["logratio"], t["dilemma_id"])
    assert s["effect"] == pytest.approx(2.0, abs=1e-12)


def test_bh_fdr_by_hand_and_min_dilemmas() -> None:
    rng = np.random.default_rng(5)
    t = paired(30, lambda lab, c, d, k, r: lab * (0.5 * c + r.normal()), dims=("t", "a", "b", "c"))
    t["label:a"] = t["label:a"] * 0 + np.where(rng.random(len(t)) < 0.5, 1.0, -1.0)  # labels unrelated to the effect
    rare = t["dilemma_id"].isin(["0", "1"])
    t["label:rare"] = np.where(rare, t["label:t"], np.nan)
    e = effects_by_dim(t, n_boot=500, seed=0, min_dilemmas=5).set_index("dim")
    assert e.loc["rare", "n_dilemmas"] == 2 and np.isnan(e.loc["rare", ["p", "q"]].astype(float)).all()
    assert not e.loc["rare", "significant"]
    p = e["p"].dropna()
    order = np.argsort(p.to_numpy())
    ranked = p.to_numpy()[order] * len(p) / np.arange(1, len(p) + 1)
    q_sorted = np.minimum(1, np.minimum.accumulate(ranked[::-1])[::-1])  # BH step-up, by hand
    q = pd.Series(q_sorted[np.argsort(order)], index=p.index)
    np.testing.assert_allclose(e.loc[p.index, "q"].astype(float), q, rtol=1e-12)
    assert e.loc["t", "significant"] and (e["significant"] == (e["q"] < 0.05)).all()


def test_spearman_monotonicity() -> None:
    mono = paired(5, lambda lab, c, d, k, rng: lab * c)
    vee = paired(5, lambda lab, c, d, k, rng: lab * c * c)  # means [1, 0, 1]: rank correlation exactly 0
    two = paired(5, lambda lab, c, d, k, rng: lab * c, coeffs=(0.0, 1.0))
    assert effects_by_dim(mono, n_boot=50)["spearman"].iloc[0] == pytest.approx(1.0)
    assert effects_by_dim(vee, n_boot=50)["spearman"].iloc[0] == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(effects_by_dim(two, n_boot=50)["spearman"].iloc[0])


def _nll_table(nll_shift: dict[float, float], pmass: dict[float, float]) -> pd.DataFrame:
    cs = tuple(sorted(nll_shift))
    t = paired(8, lambda lab, c, d, k, rng: lab * (c + rng.normal()), coeffs=cs)
    t["nll"] = 2.0 + 0.1 * t["row_id"].str.len() + t["coeff"].map(nll_shift)
    t["pmass"] = t["coeff"].map(pmass)
    return t


def test_dnll_pmass_drop_gain_by_hand() -> None:
    shift = {-2.0: 0.3, -1.0: 0.4, 0.0: 0.0, 1.0: 0.2, 2.0: 0.6}
    pm = {-2.0: 0.9, -1.0: 0.7, 0.0: 0.9, 1.0: 0.8, 2.0: 0.9}
    t = _nll_table(shift, pm)
    s = summarize(t, "t", n_boot=300)
    assert (s["dnll_pos"], s["dnll_neg"]) == (pytest.approx(0.2), pytest.approx(0.4))
    assert s["dnll"] == pytest.approx(0.3)
    assert s["pmass_drop"] == pytest.approx(0.9 - (0.8 + 0.7) / 2)
    unit = t[t["coeff"].abs() <= 1]
    t_unit = slope_test(unit["coeff"], unit["label:t"] * unit["logratio"], unit["dilemma_id"], 300)["t"]
    assert t_unit > 0 and s["gain"] == pytest.approx(100 * t_unit / 1.3)
    better = _nll_table({c: -abs(v) for c, v in shift.items()}, pm)  # steering lowers NLL: no bonus
    sb = summarize(better, "t", n_boot=300)
    ub = better[better["coeff"].abs() <= 1]
    assert sb["gain"] == pytest.approx(100 * abs(slope_test(ub["coeff"], ub["label:t"] * ub["logratio"], ub["dilemma_id"], 300)["t"]))


def test_coherent_range_by_hand() -> None:
    shift = {-2.0: 0.3, -1.0: 0.4, 0.0: 0.0, 1.0: 0.2, 2.0: 0.6}
    ok = {c: 0.9 for c in shift}
    assert coherent_range(_nll_table(shift, ok), nll_tol=0.5, pmass_floor=0.5) == 1.0  # +2 breaks ΔNLL
    assert coherent_range(_nll_table(shift, ok), nll_tol=0.7, pmass_floor=0.5) == 2.0
    assert coherent_range(_nll_table(shift, {**ok, -1.0: 0.4}), nll_tol=0.7, pmass_floor=0.5) == 0.0
    assert np.isnan(coherent_range(_nll_table(shift, {**ok, 0.0: 0.1}), nll_tol=0.7, pmass_floor=0.5))


def test_eval_warns_for_coefficients_past_the_measured_coherent_range() -> None:
    from innerpissa.cli.eval import incoherent_coeffs

    shift = {-2.0: 0.3, -1.0: 0.4, 0.0: 0.0, 1.0: 0.2, 2.0: 0.6}  # ΔNLL at +2 is 0.6 > 0.5: coherent up to |c| = 1
    summary = {"dd": summarize(_nll_table(shift, {c: 0.9 for c in shift}), "t", n_boot=50)}
    assert summary["dd"]["coherent_range"] == 1.0
    (msg,) = incoherent_coeffs(summary, [-2.0, -1.0, 0.0, 1.0, 2.0], " KL-budget units (±1 = KL 0.1)")
    assert msg.startswith("dd: --coeffs -2 2 past the measured coherent range |c| <= 1 KL-budget units")
    assert "(up to there the prompt NLL rises by at most 0.5 nats over c = 0 and P(Yes) + P(No) stays >= 0.5)" in msg
    assert incoherent_coeffs(summary, [-1.0, 0.0, 1.0]) == []
    broken = {"dd": summarize(_nll_table(shift, {**{c: 0.9 for c in shift}, -1.0: 0.4}), "t", n_boot=50)}
    assert broken["dd"]["coherent_range"] == 0.0  # answer mass 0.4 at c = -1: only c = 0 is coherent
    (msg,) = incoherent_coeffs(broken, [-1.0, 0.0, 1.0])
    assert msg.startswith("dd: no scored coefficient but 0 is coherent (the coherent range, where the prompt NLL")
    assert "already at |c| = 1 one of the two fails, so the effects at --coeffs -1 1 describe a degraded model" in msg
    assert incoherent_coeffs({"dd": {**summary["dd"], "coherent_range": float("nan")}}, [-2.0, 0.0, 2.0]) == []


def test_flip_counts_by_hand() -> None:
    # (label, logratio at c = 0, +1, -1); signed y = label * logratio
    rows = {"r1": (-1, -1, -1, 1),   # y: +, +, -  -> reverse flipped
            "r2": (1, -1, 1, -1),    # y: -, +, -  -> forward fixed
            "r3": (1, -1, 1, 1),     # y: -, +, +  -> forward fixed, reverse counter
            "r4": (1, 1, -1, -1),    # y: +, -, -  -> forward broken, reverse flipped
            "r5": (1, 1, 1, -1)}     # y: +, +, -  -> reverse flipped
    recs = [{"row_id": r, "dilemma_id": r, "coeff": c, "logratio": float(v[i]), "label:t": float(v[0])}
            for r, v in rows.items() for i, c in ((1, 0.0), (2, 1.0), (3, -1.0))]
    s = summarize(table(recs), "t", n_boot=50, min_dilemmas=2)
    assert (s["flips_forward_fixed"], s["flips_forward_broken"]) == (2, 1)
    assert (s["flips_reverse_flipped"], s["flips_reverse_counter"]) == (3, 1)


def test_yes_bias_controls() -> None:
    pure_yes = paired(10, lambda lab, c, d, k, rng: 3 * c + 0.1 * d)  # says "Yes" more, regardless of label
    s = summarize(pure_yes, "t", n_boot=200)
    assert s["effect"] == pytest.approx(0.0, abs=1e-12) and s["raw_shift"] == pytest.approx(3.0)
    assert s["yesbias_effect"] == pytest.approx(0.0, abs=1e-12) and s["yesbias_n_dilemmas"] == 10
    # add 10 one-row dilemmas labelled +1 only: the pooled effect is now spurious (3 x mean label = 1),
    # the label-balanced control is not
    extra = table([{"row_id": f"u{d}", "dilemma_id": f"u{d}", "coeff": c, "logratio": 3 * c, "label:t": 1.0}
                   for d in range(10) for c in C3])
    s2 = summarize(pd.concat([pure_yes, extra], ignore_index=True), "t", n_boot=200)
    assert s2["effect"] == pytest.approx(1.0) and s2["raw_shift"] == pytest.approx(3.0)
    assert s2["yesbias_effect"] == pytest.approx(0.0, abs=1e-12) and s2["yesbias_n_dilemmas"] == 10


def test_side_effects_and_nan_rows() -> None:
    t = paired(30, lambda lab, c, d, k, rng: lab * (2 * c + 0.2 * rng.normal()), dims=("t", "side"), seed=2)
    noise = np.random.default_rng(3).normal(size=len(t))
    t["label:null"] = np.sign(noise)  # labels independent of the (label:t-signed) effect
    t.loc[t.index[::23], "logratio"] = np.nan  # 8 rows in 8 dilemmas: those dilemmas leave every dim's slope
    e = effects_by_dim(t, n_boot=500).set_index("dim")
    s = summarize(t, "t", n_boot=500, effects=effects_by_dim(t, n_boot=500))
    hit = t.loc[t["logratio"].isna(), "dilemma_id"].unique()
    fin = t[~t["dilemma_id"].isin(hit)]
    assert s["n_dilemmas_dropped"] == len(hit) == 8 and s["n_dilemmas"] == 22
    for dim in ("t", "side", "null"):
        ref = stats.linregress(fin["coeff"], fin[f"label:{dim}"] * fin["logratio"]).slope
        assert e.loc[dim, "effect"] == pytest.approx(ref, abs=1e-12)
    assert e.loc["side", "significant"] and not e.loc["null", "significant"]
    assert s["side_effect_n_sig"] == 1
    assert s["side_effect_mean_abs"] == pytest.approx((abs(e.loc["side", "effect"]) + abs(e.loc["null", "effect"])) / 2)
    assert s["n_nan"] == int(t["logratio"].isna().sum()) and s["n_scored"] == len(t)


def test_dose_response_by_hand() -> None:
    t = paired(12, lambda lab, c, d, k, rng: lab * (c + rng.normal()))
    t["nll"] = 1.0 + 0.25 * t["coeff"] ** 2
    t["pmass"] = 0.8 - 0.1 * t["coeff"]
    dr = dose_response(t, "t", n_boot=400).set_index("coeff")
    means = (t["label:t"] * t["logratio"]).groupby(t["coeff"]).mean()
    np.testing.assert_allclose(dr["signed_mean"], means, rtol=1e-12)
    np.testing.assert_allclose(dr["dnll"], [0.25, 0.0, 0.25], atol=1e-12)
    np.testing.assert_allclose(dr["pmass"], [0.9, 0.8, 0.7], atol=1e-12)
    assert (dr["ci_low"] < dr["signed_mean"]).all() and (dr["signed_mean"] < dr["ci_high"]).all()
    assert (dr["n"] == 24).all()


def test_slice_and_dim_errors() -> None:
    t = paired(5, lambda lab, c, d, k, rng: lab * c)
    with pytest.raises(ValueError, match="mixes several"):
        effects_by_dim(pd.concat([t, t.assign(dataset="other")]))
    with pytest.raises(ValueError, match="no label column for dim 'honesty'"):
        summarize(t, "honesty")


def sided(n_todo: int, n_not: int, fn, coeffs=C3, seed: int = 0) -> pd.DataFrame:
    """Dilemmas with a to_do and a not_to_do row; the dim's +1 label is on to_do in the first `n_todo`
    dilemmas and on not_to_do in the next `n_not`. logratio = fn(side, label, c, rng)."""
    rng = np.random.default_rng(seed)
    recs = []
    for d in range(n_todo + n_not):
        on_todo = d < n_todo
        for side in ("to_do", "not_to_do"):
            lab = 1.0 if (side == "to_do") == on_todo else -1.0
            for c in coeffs:
                recs.append({"row_id": f"{d}-{side}", "dilemma_id": str(d), "side": side, "coeff": c,
                             "logratio": fn(side, lab, c, rng), "label:t": lab})
    return table(recs)


def test_pure_action_shift_scores_zero() -> None:
    """A steering that only makes the model keener to act (logratio(to_do) up, not_to_do down), with the
    labels leaning 9:1 to the to_do side, scores 0 — the pooled slope would call it +0.8·δ."""
    delta = 0.3
    t = sided(72, 8, lambda side, lab, c, rng: (delta if side == "to_do" else -delta) * c + rng.normal(0, 0.5))
    t_clean = sided(72, 8, lambda side, lab, c, rng: (delta if side == "to_do" else -delta) * c)
    e = effects_by_dim(t_clean, n_boot=200).set_index("dim").loc["t"]
    assert e["effect"] == pytest.approx(0.0, abs=1e-12)
    assert e["effect_pooled"] == pytest.approx(delta * (72 - 8) / 80)  # the confound the old estimator had
    assert (e["n_strata"], e["min_stratum"]) == (2, 8)
    s = summarize(t, "t", n_boot=500)
    assert s["ci_low"] < 0 < s["ci_high"] and abs(s["effect"]) < 0.15
    assert s["action_side"] == "to_do" and s["action_bias_ci_low"] < delta < s["action_bias_ci_high"]
    assert s["action_bias_p"] < 1e-3
    assert action_bias(t_clean, "t", n_boot=50)["action_bias"] == pytest.approx(delta)


def test_side_balanced_effect_recovers_beta_under_an_action_bias() -> None:
    """logratio = β·label·c + α·(±1 by side)·c: the effect is β exactly and action_bias is α + β·mean(s_d)."""
    alpha, beta = 0.4, 0.1
    fn = lambda side, lab, c, rng: beta * lab * c + alpha * (1 if side == "to_do" else -1) * c
    t = sided(30, 10, fn)
    e = effects_by_dim(t, n_boot=100).set_index("dim").loc["t"]
    assert e["effect"] == pytest.approx(beta)
    # per dilemma a_d = ½ d/dc[lr(to_do) − lr(not_to_do)] = α + β·s_d, s_d = +1 on 30 and −1 on 10 dilemmas
    ab = action_bias(t, "t", n_boot=100)
    assert ab["action_bias"] == pytest.approx(alpha + beta * (30 - 10) / 40) and ab["action_bias_n"] == 40


def test_one_sided_dim_is_not_estimable_and_no_side_column_is_pooled() -> None:
    t = sided(20, 0, lambda side, lab, c, rng: 0.2 * lab * c + rng.normal(0, 0.1))
    e = effects_by_dim(t, n_boot=100).set_index("dim").loc["t"]
    assert np.isnan(e["effect"]) and np.isfinite(e["effect_pooled"])
    flat = t.drop(columns="side")
    e2 = effects_by_dim(flat, n_boot=200, seed=3).set_index("dim").loc["t"]
    plain = slope_test(flat["coeff"], flat["label:t"] * flat["logratio"], flat["dilemma_id"], 200, 3)
    assert e2["effect"] == pytest.approx(plain["effect"]) and e2["se"] == pytest.approx(plain["se"])
    assert e2["n_strata"] == 1


@pytest.mark.parametrize("lose", ["drop", "blank", "drop, no dataset column"])
def test_daily_dilemmas_table_without_sides_raises(lose) -> None:
    """A DailyDilemmas table (known by its dataset name or its row ids) never falls back to the pooled slope, which
    an action bias fakes; every metric that stratifies by side refuses it. A set without sides stays pooled."""
    from innerpissa.eval.metrics import pooled_effect, ref_logscore, steering_f1

    t = sided(12, 4, lambda side, lab, c, rng: 0.4 * (1 if side == "to_do" else -1) * c).assign(dataset="dd-honesty")
    t["row_id"] = "dd-" + t["row_id"]
    lost = {"drop": t.drop(columns="side"), "blank": t.assign(side=""),
            "drop, no dataset column": t.drop(columns=["side", "dataset"])}[lose]
    for metric in (lambda x: effects_by_dim(x, n_boot=10), lambda x: summarize(x, "t", n_boot=10),
                   lambda x: dose_response(x, "t", n_boot=10), lambda x: pooled_effect([x], "t", n_boot=10),
                   lambda x: action_bias(x, "t", n_boot=10), lambda x: ref_logscore(x, "t"), lambda x: steering_f1(x, "t")):
        with pytest.raises(ValueError, match="DailyDilemmas score table has .* 'side' column"):
            metric(lost)
    assert effects_by_dim(t, n_boot=10).set_index("dim").loc["t", "effect"] == pytest.approx(0.0, abs=1e-12)
    generic = t.drop(columns="side").assign(dataset="my_questions", row_id=t["row_id"].str[3:])
    e = effects_by_dim(generic, n_boot=10).set_index("dim").loc["t"]  # no sides: one stratum, the pooled slope
    assert e["n_strata"] == 1 and e["effect"] == pytest.approx(0.4 * (12 - 4) / 16)


def test_stratified_bootstrap_se_matches_the_analytic_se() -> None:
    """Two strata of independent dilemmas with known per-dilemma slope noise σ: the stratified se of the
    mean of the two stratum slopes is ½·sqrt(σ²/n₁ + σ²/n₂) (Var of a mean of independent slopes)."""
    sigma, n1, n2 = 0.2, 120, 40
    rng = np.random.default_rng(5)
    slopes = rng.normal(0, sigma, n1 + n2)
    t = sided(n1, n2, lambda side, lab, c, r: 0.0 * c)
    t["logratio"] = t["dilemma_id"].astype(int).map(dict(enumerate(slopes))) * t["coeff"] * t["label:t"]
    s = summarize(t, "t", n_boot=4000)
    assert s["se"] == pytest.approx(0.5 * np.sqrt(sigma**2 / n1 + sigma**2 / n2), rel=0.15)


def test_gain_is_signed() -> None:
    """Moving the target the wrong way gives a negative gain, not the same gain as the right way."""
    up = sided(20, 20, lambda side, lab, c, rng: 0.2 * lab * c + rng.normal(0, 0.3))
    down = up.assign(logratio=-up["logratio"])
    g_up, g_down = summarize(up, "t", n_boot=300)["gain"], summarize(down, "t", n_boot=300)["gain"]
    assert g_up > 0 > g_down and g_down == pytest.approx(-g_up, rel=0.2)
