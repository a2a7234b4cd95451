"""Each ReprPO term against a small hand-computed example."""

import math

import torch

from innerpissa import loss as L


def test_symlog():
    x = torch.tensor([-3.0, 0.0, 0.5])
    assert torch.allclose(L.symlog(x), torch.tensor([-math.log(4.0), 0.0, math.log(1.5)]))


def test_preference_direction_mean_normalised_and_topk():
    diff = torch.tensor([[[3.0, 0.0, 1.0]], [[1.0, 0.0, -1.0]]])  # mean = [2, 0, 0]
    assert torch.allclose(L.preference_direction(diff), torch.tensor([1.0, 0.0, 0.0]))
    diff = torch.tensor([[3.0, -4.0, 0.5]])
    assert torch.allclose(L.preference_direction(diff, topk=2), torch.tensor([0.6, -0.8, 0.0]))


def test_projection_and_separation():
    u = torch.tensor([1.0, 0.0])
    h_cho = torch.tensor([[[2.0, 5.0], [4.0, 5.0]]])  # [B=1, N=2, k=2]
    h_rej = torch.tensor([[[1.0, 0.0], [1.0, 9.0]]])
    proj = L.projection(h_cho, h_rej, u)
    assert torch.allclose(proj, torch.tensor([2.0]))  # mean of (1, 3)
    ref = torch.tensor([0.5])
    # relative shift = (2 - 0.5) / 0.5 = 3: at c=+1 the loss is -log(4); at c=-1 it is +log(4)
    assert math.isclose(L.relative_shift(proj, ref).item(), 3.0, rel_tol=1e-5)
    assert math.isclose(L.separation(proj, ref, +1.0).item(), -math.log(4.0), rel_tol=1e-5)
    assert math.isclose(L.separation(proj, ref, -1.0).item(), math.log(4.0), rel_tol=1e-5)
    # batch: mean shift over pairs divided by mean |reference|
    pi, rf = torch.tensor([1.0, 3.0]), torch.tensor([-1.0, 1.0])
    assert math.isclose(L.relative_shift(pi, rf).item(), 2.0, rel_tol=1e-5)


def test_coherence_barrier_only_beyond_tau():
    nll_ref = torch.tensor([[1.0, 1.0, 1.0]])
    nll_pi = torch.tensor([[1.2, 2.5, 9.0]])  # increases 0.2, 1.5, 8.0
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # last token is padding
    # tau = 0.5: relu -> 0, 1.0 ; log1p -> 0, log 2 ; mean over 2 tokens
    assert math.isclose(L.coherence(nll_pi, nll_ref, mask, 0.5).item(), math.log(2.0) / 2, rel_tol=1e-6)


def test_token_nll_and_seq_logp():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]]))
    targets = torch.tensor([[0, 1]])
    nll = L.token_nll(logits, targets)
    assert torch.allclose(nll, torch.tensor([[math.log(2), -math.log(0.8)]]), atol=1e-6)
    assert torch.allclose(L.seq_logp(nll, torch.tensor([[1.0, 0.0]])), torch.tensor([-math.log(2)]))


def test_monotonic_hinge_accepts_either_consistent_order():
    t = torch.tensor
    assert L.monotonic(t(-1.0), t(0.0), t(1.0), 0.1).item() == 0.0  # increasing: fine
    assert L.monotonic(t(1.0), t(0.0), t(-1.0), 0.1).item() == 0.0  # decreasing: fine too
    # d(-1)=0, d(0)=0.5, d(+1)=0.2: increasing order costs relu(0.5-0.2+0.1)=0.4 ; decreasing costs
    # relu(0.2-0.5+0.1)=0 + relu(0.5-0+0.1)=0.6 -> min = 0.4
    assert math.isclose(L.monotonic(t(0.0), t(0.5), t(0.2), 0.1).item(), 0.4, rel_tol=1e-6)


def test_adaptive_weights_loosen_the_lagging_direction():
    w_pos, w_neg = L.adaptive_weights(torch.tensor(-2.0), torch.tensor(-0.5))  # + is further along
    assert math.isclose((w_pos + w_neg).item(), 2.0, rel_tol=1e-6)
    assert w_neg < w_pos
    expect = 2 * math.exp(2.0) / (math.exp(2.0) + math.exp(0.5))
    assert math.isclose(w_pos.item(), expect, rel_tol=1e-6)


# ---- published-recipe terms ------------------------------------------------------------------------


def test_separation_pairwise_asks_for_a_full_reversal_at_minus_one():
    pi, ref = torch.tensor([2.0, -1.0]), torch.tensor([1.0, -2.0])
    # c=+1: per pair (pi - ref)/|ref| = (1, 0.5)
    want = -(math.log(2.0) + math.log(1.5)) / 2
    assert math.isclose(L.separation_pairwise(pi, ref, 1.0).item(), want, rel_tol=1e-6)
    # c=-1: (-pi - ref)/|ref| = (-3, 1.5)
    want = -(-math.log(4.0) + math.log(2.5)) / 2
    assert math.isclose(L.separation_pairwise(pi, ref, -1.0).item(), want, rel_tol=1e-6)
    assert L.separation_pairwise(-ref, ref, -1.0).item() == 0.0  # exactly reversed: no more push from the log term
    # a near-zero reference is floored at 0.1 x mean |ref| = 0.05 (not divided by 1e-9)
    assert math.isclose(L.separation_pairwise(torch.tensor([0.05, 1.0]), torch.tensor([0.0, 1.0]), 1.0).item(),
                        -math.log(2.0) / 2, rel_tol=1e-5)


def test_antiparallel_rewards_opposite_changes_along_the_reference():
    ref = torch.tensor([[1.0, 0.0], [3.0, 0.0]])  # per-dim std (1, ~0) -> floored (1, 0.05); v_ref = (2, 0)
    pos = torch.tensor([[1.0, 1.0], [1.0, -1.0]])  # mean (1, 0)
    assert math.isclose(L.antiparallel(pos, -2 * pos, ref).item(), -math.log(31.0), rel_tol=1e-5)  # p = -1
    assert math.isclose(L.antiparallel(pos, pos, ref).item(), math.log(931.0), rel_tol=1e-5)  # p = +1: 30 + 30^2
    # dim 1 is scaled by 1/0.05: means (1, .05) and (-1, .05) become (1, 1), (-1, 1): cosines ±1/sqrt2, p = -1/2
    pos, neg = torch.tensor([[1.0, 0.05]] * 2), torch.tensor([[-1.0, 0.05]] * 2)
    assert math.isclose(L.antiparallel(pos, neg, ref).item(), -math.log(16.0), rel_tol=1e-5)


def test_entropy_and_total_variation():
    p = torch.log(torch.tensor([[[0.5, 0.25, 0.25]]]))
    q = torch.log(torch.tensor([[[0.25, 0.25, 0.5]]]))
    assert math.isclose(L.token_entropy(p).item(), 1.5 * math.log(2.0), rel_tol=1e-6)
    assert math.isclose(L.total_variation(p, q).item(), 0.25, rel_tol=1e-6)
    assert L.total_variation(p, p).item() == 0.0


def test_tv_coherence_threshold_scales_with_entropy():
    tv = torch.tensor([[0.25, 0.9, 0.5]])
    h = torch.tensor([[0.23, 0.98, 0.0]])  # sqrt(H + 0.02) = 0.5, 1.0, 0.141 -> thresholds (alpha 0.5) .25, .5, .07
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the third token (over its threshold) is masked out
    # violations 0 and 0.4: penalties 0 and log1p(10*0.4)^2 + 0.4, mean over 2 tokens
    want = (math.log(5.0) ** 2 + 0.4) / 2
    assert math.isclose(L.tv_coherence(tv, h, mask, alpha=0.5, scale=10.0).item(), want, rel_tol=1e-5)


def test_monotonic_entropy_margin_per_pair_either_order():
    h = torch.tensor([4.0, 1.0])  # frac 0.5, floor 0: margins 1.0 and 0.5
    neg, pos = torch.tensor([-2.0, -0.2]), torch.tensor([0.5, 1.0])
    # forward order: (0 + 0.3) + (0.5 + 0) over 2 pairs = 0.4; reversed order costs 3.35
    assert math.isclose(L.monotonic_entropy(neg, pos, h, 0.5, floor=0.0).item(), 0.4, rel_tol=1e-6)
    assert L.monotonic_entropy(torch.tensor([2.0, 1.0]), torch.tensor([-2.0, -1.0]), h, 0.5, 0.0).item() == 0.0


def test_warmup_factor_ramps_linearly():
    assert L.warmup_factor(5, 100, 0.2) == 0.25
    assert L.warmup_factor(20, 100, 0.2) == 1.0 == L.warmup_factor(80, 100, 0.2)
    assert L.warmup_factor(0, 10, 0.0) == 1.0
