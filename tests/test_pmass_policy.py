"""Low-pmass policy: a dilemma with a NaN log-ratio (pmass below threshold) at any scored c is dropped at every c
for the slope, and counted. Dropping only that (row, c) lets a pure Yes-shift and the dilemma offsets leak in."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from innerpissa.eval.metrics import answered, dose_response, effects_by_dim, summarize

C3 = (-1.0, 0.0, 1.0)


def paired(n: int, fn) -> pd.DataFrame:
    """n dilemmas x rows labelled +1/-1 x C3; logratio = fn(label, c, dilemma)."""
    recs = [{"method": "m", "seed": 0, "dataset": "d", "row_id": f"{d}-{k}", "dilemma_id": str(d), "coeff": c,
             "logratio": fn(lab, c, d), "label:t": lab, "pmass": 0.9, "nll": 1.0}
            for d in range(n) for k, lab in enumerate((1.0, -1.0)) for c in C3]
    return pd.DataFrame(recs)


def lose(t: pd.DataFrame, dilemmas: list[int], c: float, label: float = 1.0) -> pd.DataFrame:
    """The +1 (or -1) row of each dilemma in `dilemmas` stops answering at c (NaN log-ratio)."""
    t = t.copy()
    hit = t["dilemma_id"].isin([str(d) for d in dilemmas]) & (t["coeff"] == c) & (t["label:t"] == label)
    t.loc[hit, "logratio"] = np.nan
    return t


def test_pure_yes_shift_stays_out_of_the_effect_when_steering_breaks_answers():
    # says "Yes" more with c, whatever the label: the label-signed effect is 0 by construction
    t = lose(paired(10, lambda lab, c, d: 3 * c + 0.1 * d), dilemmas=[0, 1, 2], c=1.0, label=-1.0)
    s = summarize(t, "t", n_boot=200, min_dilemmas=2)
    assert s["effect"] == pytest.approx(0.0, abs=1e-12)
    assert s["n_dilemmas"] == 7 and s["n_dilemmas_dropped"] == 3
    # the old per-(row, c) drop keeps three unpaired +1 rows at c = 1 whose Yes-shift reads as an effect
    fin = t[t["logratio"].notna()]
    leak = stats.linregress(fin["coeff"], fin["label:t"] * fin["logratio"]).slope
    assert leak > 0.1


def test_dilemma_offsets_do_not_become_a_slope():
    # no effect at all, only per-dilemma offsets; the dilemmas with the largest offsets stop answering at c = +1
    t = paired(10, lambda lab, c, d: lab * d)
    t = lose(lose(t, [7, 8, 9], 1.0, 1.0), [7, 8, 9], 1.0, -1.0)
    e = effects_by_dim(t, n_boot=200, min_dilemmas=2).set_index("dim").loc["t"]
    assert e["effect"] == pytest.approx(0.0, abs=1e-12) and e["n_dilemmas"] == 7
    fin = t[t["logratio"].notna()]
    assert stats.linregress(fin["coeff"], fin["label:t"] * fin["logratio"]).slope == pytest.approx(-0.7)  # per-row drop
    dr = dose_response(t, "t", n_boot=50).set_index("coeff")
    np.testing.assert_allclose(dr["signed_mean"], [3.0, 3.0, 3.0])  # same 7 dilemmas at every c: mean offset 3


def test_answered_keeps_complete_dilemmas_and_counts_the_rest():
    t = paired(4, lambda lab, c, d: lab * c)
    t = lose(t, [1], 0.0)
    t = t[~((t["dilemma_id"] == "2") & (t["coeff"] == -1.0) & (t["label:t"] < 0))]  # a row never scored at c = -1
    kept, dropped = answered(t, n_coeffs=3)
    assert sorted(kept["dilemma_id"].unique()) == ["0", "3"] and dropped == 2
    assert len(kept) == 2 * 2 * 3
