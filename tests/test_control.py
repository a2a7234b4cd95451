"""Positive control on a tiny model, against steerers whose answer is known by construction."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import pytest
import torch

from innerpissa.concepts import ContrastPairs
from innerpissa.batching import chat_text
from innerpissa.eval.control import _r_from_sums, neutral_messages, null_band, positive_control, probe_control
from innerpissa.testing import tiny_model
from tests._eval_steerers import AddVector, Identity

POS, NEG, NEU = "Pretend you're an honest person.", "Pretend you're a dishonest person.", "Pretend you're a person."


def _pairs() -> ContrastPairs:
    sfx = ("The sky is blue", "I have never lied to", "Water boils at one hundred", "My friend told me that",
           "The capital of France is", "Yesterday I went to the")
    n = len(sfx)
    return ContrastPairs((POS,) * n, (NEG,) * n, sfx, (NEU,) * n, "none")


class PersonaSwap(Identity):
    """'Steers' by swapping the neutral prompt for a persona prompt: +c -> positive, -c -> negative (sign=-1 reverses)."""

    name = "swap"

    def __init__(self, sign: float = 1.0) -> None:
        self.sign = sign

    def messages(self, messages: list[dict[str, str]], c: float) -> list[dict[str, str]]:
        if c == 0:
            return messages
        to = POS if c * self.sign > 0 else NEG
        return [dict(m, content=to) if m["content"] == NEU else m for m in messages]


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    return tiny_model("llama", seed=0)


def test_persona_swap_reproduces_the_persona_difference_exactly(tiny) -> None:
    model, tok = tiny
    r = positive_control(model, tok, PersonaSwap(), _pairs(), n_boot=200)
    assert r["score"] == pytest.approx(1.0) and r["slope"] == pytest.approx(1.0)
    assert r["n_misaligned"] == 0 and r["n_suffixes"] == 6 and r["n_tokens"] > 6
    assert r["ci_low"] == pytest.approx(1.0)
    rev = positive_control(model, tok, PersonaSwap(-1.0), _pairs(), n_boot=200)
    assert rev["score"] == pytest.approx(-1.0) and rev["r_pos"] < 0 and rev["r_neg"] < 0


def test_no_steering_scores_nothing_and_a_random_vector_is_not_perfect(tiny) -> None:
    model, tok = tiny
    assert np.isnan(positive_control(model, tok, Identity(), _pairs(), n_boot=50)["score"])
    v = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    r = positive_control(model, tok, AddVector(v), _pairs(), n_boot=200)
    assert -1 < r["score"] < 1 and r["ci_low"] <= r["score"] <= r["ci_high"]


def test_neutral_messages_replace_only_the_persona() -> None:
    p = _pairs()
    msgs = neutral_messages(p, 2)
    assert [m["content"] for m in msgs] == ["", NEU, p.suffixes[2]]


def test_r_from_sums_matches_numpy_and_null_band_by_hand() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=50), rng.normal(size=50)
    sums = np.array([50, x.sum(), y.sum(), (x * x).sum(), (y * y).sum(), (x * y).sum()])
    assert _r_from_sums(sums) == pytest.approx(np.corrcoef(x, y)[0, 1])
    b = null_band([0.1, -0.1, 0.0])  # mean 0, sd 0.1, t_{0.975, 2} = 4.3027
    assert b["null_hi"] == pytest.approx(4.302653 * 0.1 * np.sqrt(1 + 1 / 3), rel=1e-5)


def _suffix_mean_by_hand(model, tok, messages, layer: int) -> np.ndarray:
    """Unbatched, unpadded: mean over the assistant-content tokens of `hidden_states[layer]` (the output of
    decoder layer layer - 1, unsteered)."""
    text, start = chat_text(tok, messages)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    comp = torch.tensor([o[0] >= start and o[1] > o[0] for o in enc["offset_mapping"]])
    with torch.no_grad():
        h = model(input_ids=torch.tensor([enc["input_ids"]]), output_hidden_states=True).hidden_states[layer][0]
    return h[comp].double().mean(0).numpy()


def test_probe_control_persona_swap_is_one_and_identity_is_zero(tiny) -> None:
    model, tok = tiny
    p = _pairs()
    r = probe_control(model, tok, PersonaSwap(), p, p, n_boot=100)
    assert r["probe_layers"] == [0, 1, 2, 3]
    for d in (0.25, 0.5, 0.75, 1):
        assert r[f"probe_score_d{d:g}"] == pytest.approx(1.0)
    assert r["probe_score"] == r["probe_score_d1"] and r["probe_ci_low"] == pytest.approx(1.0)
    assert probe_control(model, tok, PersonaSwap(-1.0), p, p, n_boot=100)["probe_score"] == pytest.approx(-1.0)
    assert probe_control(model, tok, Identity(), p, p, n_boot=100)["probe_score"] == 0.0


def test_probe_control_of_an_added_vector_matches_the_hand_computation(tiny) -> None:
    """AddVector(v) moves decoder layer 1's output (depth 0.5 of 4 layers) by exactly ±v, so there the score is
    2 v·w / mean gap, w and the gap from unbatched forwards (hidden_states[2]); layer 0 (before it) does not move."""
    model, tok = tiny
    p = _pairs()
    train, val = p.subset([0, 1, 2, 3]), p.subset([4, 5])
    v = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(3))
    r = probe_control(model, tok, AddVector(v, layer=1), train, val, n_boot=100)

    def diffs(pairs):
        return np.stack([_suffix_mean_by_hand(model, tok, pairs.messages(i, True), 2)
                         - _suffix_mean_by_hand(model, tok, pairs.messages(i, False), 2) for i in range(len(pairs))])

    w = diffs(train).mean(0)
    w /= np.linalg.norm(w)
    hand = 2 * v.double().numpy() @ w / (diffs(val) @ w).mean()
    assert r["probe_score_d0.5"] == pytest.approx(hand, rel=1e-4)
    assert r["probe_score_d0.25"] == pytest.approx(0.0, abs=1e-6)


def test_controls_in_one_pass_equal_the_two_controls_run_apart(tiny) -> None:
    """`controls` shares the steered forwards and takes the base log-probs from the basis; its numbers are those
    of positive_control and probe_control computed independently."""
    from innerpissa.eval.control import controls, probe_basis

    model, tok = tiny
    p = _pairs()
    train, val = p.subset([0, 1, 2]), p.subset([3, 4, 5])
    v = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(5))
    st = AddVector(v, layer=1)
    both = controls(model, tok, st, train, val, probe_basis(model, tok, train, val), n_boot=200)
    apart = {**positive_control(model, tok, st, val, n_boot=200), **probe_control(model, tok, st, train, val, n_boot=200)}
    assert both.keys() == apart.keys()
    for k, x in apart.items():
        assert both[k] == pytest.approx(x, rel=1e-5, abs=1e-7, nan_ok=True), k
