"""Is the dilemma bootstrap calibrated? A null simulation of the evaluator's design, through `slope_test` itself.

    python bench/bootstrap_calibration.py [--sims 2000] [--n-boot 1000]   -> bench/results/bootstrap_calibration.json

Design (as DailyDilemmas honesty): G dilemmas x 2 rows labelled +1/-1 x c in {-1, 0, +1}. The label-signed
log-ratio is y = u_d + e_dk + s_d·c + label·b·c + noise: a dilemma offset u_d, a row offset e_dk, a random
per-dilemma slope s_d with mean 0 (effects differ by dilemma; the population effect is 0, the null), a Yes-shift
b·c of the raw log-ratio (cancels within a dilemma) and row noise. Scenarios: normal slopes, heavy-tailed slopes
(t, 3 df), and the side-stratified test (`strata`: two halves of the dilemmas, as `signed_test` uses).

Per G and scenario: the rejection rate of p < 0.05 and the coverage of the true slope 0 by the reported 95% CI
(`slope_test`: effect ± t(G-K) · se, the bootstrap deviations widened by the CR1 factor sqrt(n/(n-1)) per stratum)
and, for the unstratified design, by `ttest` = the one-sample t-test on per-dilemma slopes (exact under normality;
with every dilemma on the same c grid the pooled slope is their mean), the independent reference. (Before the
CR1 factor, at commit 0e850dd, the percentile CI covered 87-90 % / 93 % / 94.7-94.9 % at 10 / 30 / 150 dilemmas and
p < 0.05 rejected 6.2-7.5 % / 5.2-5.7 % / 4.6-5.2 %.)
Monte Carlo standard error of a 5% rate with 2000 simulations: 0.49 points; of 95% coverage: 0.49 points.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).parent))
from common import write  # noqa: E402

from innerpissa.eval.metrics import slope_test  # noqa: E402

COEFFS = np.array([-1.0, 0.0, 1.0])
DILEMMAS = (10, 30, 150)


def simulate(G: int, rng: np.random.Generator, heavy: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, groups) for G dilemmas under the null (population slope 0); rows ordered dilemma, label, c."""
    u = rng.normal(0, 1.0, (G, 1, 1))
    s = 0.3 * (rng.standard_t(3, (G, 1, 1)) / np.sqrt(3.0) if heavy else rng.normal(0, 1.0, (G, 1, 1)))  # sd 0.3
    label = np.array([1.0, -1.0]).reshape(1, 2, 1)
    c = COEFFS.reshape(1, 1, -1)
    y = u + rng.normal(0, 0.5, (G, 2, 1)) + s * c + label * 1.5 * c + rng.normal(0, 0.5, (G, 2, len(COEFFS)))
    x = np.broadcast_to(c, y.shape)
    g = np.broadcast_to(np.arange(G).reshape(G, 1, 1), y.shape)
    return x.ravel(), y.ravel(), g.ravel()


def per_dilemma_slopes(x: np.ndarray, y: np.ndarray, g: np.ndarray) -> np.ndarray:
    """OLS slope of each dilemma's own rows (every dilemma on the same grid: the pooled slope is their mean)."""
    G = int(g.max()) + 1
    xc, yc = x.reshape(G, -1), y.reshape(G, -1)
    xc = xc - xc.mean(1, keepdims=True)
    return (xc * yc).sum(1) / (xc * xc).sum(1)


def run(G: int, scenario: str, sims: int, n_boot: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    stratified = scenario == "stratified"
    rej = {"reported": 0, "ttest": 0}
    cover = {"reported": 0, "ttest": 0}
    widths = {k: [] for k in cover}
    for i in range(sims):
        x, y, g = simulate(G, rng, heavy=scenario == "heavy")
        strata = (g < G // 2).astype(int) if stratified else None
        r = slope_test(x, y, g, n_boot, seed=i, strata=strata)
        rej["reported"] += r["p"] < 0.05
        intervals = {"reported": (r["ci_low"], r["ci_high"])}
        if not stratified:
            b = per_dilemma_slopes(x, y, g)
            tt = stats.ttest_1samp(b, 0.0)
            rej["ttest"] += tt.pvalue < 0.05
            ci = tt.confidence_interval(0.95)
            intervals["ttest"] = (ci.low, ci.high)
        for k, (lo, hi) in intervals.items():
            cover[k] += lo <= 0.0 <= hi
            widths[k].append(hi - lo)
    out = {"dilemmas": G, "scenario": scenario, "sims": sims, "n_boot": n_boot,
           "rejection_rate_p05": {k: float(v) / sims for k, v in rej.items() if not (k == "ttest" and stratified)},
           "ci95_coverage": {k: float(v) / sims for k, v in cover.items() if widths[k]},
           "ci95_median_width": {k: float(np.median(v)) for k, v in widths.items() if v}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sims", type=int, default=2000)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    results = []
    for scenario in ("normal", "heavy", "stratified"):
        for G in DILEMMAS:
            r = run(G, scenario, a.sims, a.n_boot, a.seed)
            results.append(r)
            print(f"{scenario:10s} G={G:3d} reject {r['rejection_rate_p05']} cover {r['ci95_coverage']}", flush=True)
    path = write("bootstrap_calibration", {"design": "G dilemmas x 2 rows (+1/-1) x c in {-1,0,1}, null slope 0",
                                           "seed": a.seed, "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
