"""`slope_test`'s p-value against an independent computation, and its calibration under the null.

With every dilemma scored on the same c grid the pooled OLS slope is the mean of the per-dilemma slopes, so
the cluster test is a one-sample t-test on those slopes (scipy's ttest_1samp): exact under normality, and a
reference that shares no code with the bootstrap. The bootstrap's plug-in SE of that mean is sqrt((G-1)/G) times
the t-test's; slope_test widens it by the CR1 factor, so its t, p and CI must match the t-test's."""

import numpy as np
import pytest
from scipy import stats

from innerpissa.eval.metrics import slope_test

C = np.array([-1.0, 0.0, 1.0])


def design(G: int, rng: np.random.Generator, effect: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """G dilemmas x 2 rows x c in C: y = offset + (effect + dilemma slope)·c + noise; rows dilemma-major."""
    slope = effect + 0.3 * rng.normal(size=(G, 1, 1))
    y = rng.normal(size=(G, 1, 1)) + rng.normal(0, 0.5, (G, 2, 1)) + slope * C + rng.normal(0, 0.5, (G, 2, 3))
    x = np.broadcast_to(C, y.shape).ravel()
    g = np.broadcast_to(np.arange(G).reshape(G, 1, 1), y.shape).ravel()
    return x, y.ravel(), g


def per_dilemma(x, y, g):
    G = g.max() + 1
    xc = x.reshape(G, -1) - x.reshape(G, -1).mean(1, keepdims=True)
    return (xc * y.reshape(G, -1)).sum(1) / (xc * xc).sum(1)


@pytest.mark.parametrize("G, effect", [(40, 0.12), (12, 0.2), (150, 0.03)])
def test_p_value_matches_one_sample_t_test_on_dilemma_slopes(G, effect):
    x, y, g = design(G, np.random.default_rng(G), effect)
    r = slope_test(x, y, g, n_boot=20000, seed=1)
    b = per_dilemma(x, y, g)
    tt = stats.ttest_1samp(b, 0.0)
    assert r["effect"] == pytest.approx(b.mean(), abs=1e-12)
    assert r["t"] == pytest.approx(tt.statistic, rel=0.03)  # bootstrap noise ~1%
    assert r["p"] == pytest.approx(tt.pvalue, rel=0.15)
    ci = tt.confidence_interval(0.95)
    half = (ci.high - ci.low) / 2
    assert r["ci_low"] == pytest.approx(ci.low, abs=0.03 * half) and r["ci_high"] == pytest.approx(ci.high, abs=0.03 * half)


def test_stratified_se_is_the_unbiased_se_of_the_mean_of_stratum_means():
    """Two strata of 6 and 4 dilemmas: the effect is the mean of the stratum means of the per-dilemma slopes, with
    Var = (s1²/n1 + s2²/n2)/4 from the sample variances (ddof=1), which the widened bootstrap SD must match."""
    x, y, g = design(10, np.random.default_rng(3), 0.1)
    strata = np.where(g < 6, "a", "b")
    r = slope_test(x, y, g, n_boot=40000, seed=2, strata=strata)
    b = per_dilemma(x, y, g)
    assert r["effect"] == pytest.approx((b[:6].mean() + b[6:].mean()) / 2, abs=1e-12)
    se = 0.5 * np.sqrt(b[:6].var(ddof=1) / 6 + b[6:].var(ddof=1) / 4)
    assert r["se"] == pytest.approx(se, rel=0.02)
    assert r["p"] == pytest.approx(2 * stats.t.sf(abs(r["effect"]) / se, 8), rel=0.05)


def test_null_rejection_rate_is_near_nominal_at_30_dilemmas():
    rng = np.random.default_rng(0)
    p = np.array([slope_test(*design(30, rng, 0.0), n_boot=300, seed=i)["p"] for i in range(300)])
    # nominal 5% (300 simulations: Monte Carlo SE 1.3 points)
    assert 0.02 <= (p < 0.05).mean() <= 0.085
    assert stats.kstest(p, "uniform").pvalue > 0.001  # p-values roughly uniform under the null
