"""The ReprPO objective's term table: every LossConfig kind has its term, each term reads the right rows, and the
total is the weighted sum of the named terms (hand-computed on small tensors)."""

import math
import typing

import pytest
import torch

from innerpissa.config import LossConfig
from innerpissa.objectives import reprpo as R

TERMS = {"sep_pos": 0.5, "sep_neg": -0.25, "coh_pos": 2.0, "coh_neg": 4.0, "mono": 0.1}


def _terms() -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in TERMS.items()}


def test_every_kind_has_exactly_one_term():
    def kinds(name: str) -> set[str]:
        return set(typing.get_args(LossConfig.model_fields[name].annotation))

    assert kinds("sep_kind") == set(R.SEPARATION) | set(R.JOINT_SEPARATION)
    assert not set(R.SEPARATION) & set(R.JOINT_SEPARATION)
    assert kinds("coh_kind") == set(R.COHERENCE) and kinds("mono_kind") == set(R.MONOTONIC)


@pytest.mark.parametrize("coh_kind,adaptive", [("nll", False), ("tv", False), ("nll", True)])
def test_total_is_the_weighted_sum_of_the_named_terms(coh_kind, adaptive):
    lc = LossConfig(sep_weight=2.0, coh_weight=3.0, mono_weight=5.0, coh_kind=coh_kind, adaptive=adaptive)
    ramp = 0.5  # the warm-up scales the constraints (coherence, monotonic), not the separation
    coh_w = 1.0 if coh_kind == "tv" else 3.0  # the TV barrier carries its weight inside the term
    w_pos = 2 * math.exp(-0.5) / (math.exp(-0.5) + math.exp(0.25)) if adaptive else 1.0  # 2·softmax(−sep)
    w_neg = 2 - w_pos if adaptive else 1.0
    want = 2.0 * (0.5 - 0.25) + ramp * coh_w * (w_pos * 2.0 + w_neg * 4.0) + ramp * 5.0 * 0.1
    assert R.weights(lc, ramp) == {"sep": 2.0, "coh": ramp * coh_w, "mono": ramp * 5.0}
    assert R.total_loss(_terms(), lc, ramp).item() == pytest.approx(want, rel=1e-12)
    if not adaptive:
        assert want == pytest.approx({"nll": 9.75, "tv": 3.75}[coh_kind])


def test_terms_read_each_coefficients_positive_rows():
    """At c = +1 the coherence barrier covers the chosen rows, at c = −1 the rejected ones; separation and the
    monotonic hinge by hand."""
    one = torch.ones(2, 2)
    ref = R.Reference(hs=torch.zeros(2, 1, 1), nll=torch.zeros(2, 2), mask=one, coh_mask=one)
    lc = LossConfig(tau=0.5, mono_margin=0.1)
    s = R.Step(lc, ref, 1, proj_ref=torch.tensor([2.0]), diff_ref=torch.zeros(1, 1), lp_zero=torch.tensor([0.0]),
               n_first=0)
    s.nll[1.0] = torch.tensor([[1.0, 2.0], [9.0, 9.0]])  # chosen row, rejected row
    s.nll[-1.0] = torch.tensor([[9.0, 9.0], [0.5, 3.5]])
    assert R.COHERENCE["nll"](s, 1.0).item() == pytest.approx((math.log(1.5) + math.log(2.5)) / 2)
    assert R.COHERENCE["nll"](s, -1.0).item() == pytest.approx(math.log(4.0) / 2)
    s.proj[1.0], s.proj[-1.0] = torch.tensor([3.0]), torch.tensor([1.0])  # shift +0.5 and −0.5 of |p_ref| = 2
    assert R.SEPARATION["batch"](s, 1.0).item() == pytest.approx(-math.log(1.5), rel=1e-5)
    assert R.SEPARATION["batch"](s, -1.0).item() == pytest.approx(-math.log(1.5), rel=1e-5)
    s.lp[1.0], s.lp[-1.0] = torch.tensor([0.3]), torch.tensor([-0.05])  # ordered up, but −1 is within the margin
    assert R.MONOTONIC["fixed"](s).item() == pytest.approx(0.05)
