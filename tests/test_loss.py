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
