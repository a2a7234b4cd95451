"""Output-level rivals `bipo` and `dpo_lora`: the DPO/BiPO loss by hand, c = 0 identity, training moves the
preference both ways, the shared loop reproduces the old DPO loop and resumes bit-identically, save/load, and
selection in `compare`."""

from __future__ import annotations

import json
import math

import pytest
import torch

from innerpissa.concepts import concept_from_words, make_pairs
from innerpissa.experiments.compare import compare_configs
from innerpissa.loss import dpo
from innerpissa.loop import Loop
from innerpissa.models import decoder_layers
from innerpissa.objectives.dpo import DPOObjective
from innerpissa.steerers import get_steerer, load_steerer
from innerpissa.steerers._addition import add_to_outputs
from innerpissa.steerers._preference import loop_config, preference_config, preference_data, reward_margins
from innerpissa.testing import tiny_model

FAST = {"steps": 12, "batch_size": 4, "gen_tokens": 4}
TRAIN, VAL = make_pairs(concept_from_words("honest", "dishonest"))
PAIRS = TRAIN.subset(list(range(48)))


def test_dpo_loss_by_hand():
    # pair 1: margin (−1 − −2) − (−3 − −2) = 2; pair 2: (−2 − −2) − (−1 − −2) = −1; β = 0.5
    args = tuple(torch.tensor(v, dtype=torch.float64) for v in ([-1.0, -2.0], [-3.0, -1.0], [-2.0, -2.0], [-2.0, -2.0]))
    softplus = lambda x: math.log1p(math.exp(-x))  # −log σ(x)
    assert dpo(*args, beta=0.5).item() == pytest.approx((softplus(1.0) + softplus(-0.5)) / 2)
    assert dpo(*args, beta=0.5).item() == pytest.approx(0.6436693358, abs=1e-9)
    # BiPO's d = −1 term: the preference flips, −log σ(−β·margin)
    assert dpo(*args, beta=0.5, sign=-1.0).item() == pytest.approx((softplus(-1.0) + softplus(0.5)) / 2)
    assert dpo(*args, beta=0.5, sign=-1.0).item() == pytest.approx(0.8936693358, abs=1e-9)


@pytest.fixture(scope="module", params=["bipo", "dpo_lora"])
def fitted(request):
    model, tok = tiny_model("llama")
    ids = torch.randint(0, 1000, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = model(ids).logits
    lr = {"bipo": 0.05, "dpo_lora": 0.01}[request.param]
    steerer = get_steerer(request.param, lr=lr, **FAST)
    steerer.fit(model, tok, PAIRS, VAL.subset(list(range(12))), progress=False)
    return request.param, model, tok, steerer, ids, base


def test_c0_is_the_base_model(fitted):
    _, model, _, steerer, ids, base = fitted
    with torch.no_grad(), steerer.steer(model, 0.0):
        assert torch.equal(model(ids).logits, base)
    with torch.no_grad(), steerer.steer(model, 1.0):
        assert (model(ids).logits - base).abs().max() > 1e-3
    with torch.no_grad():  # leaving the context restores the base model
        assert torch.equal(model(ids).logits, base)


def test_training_moves_the_preference_both_ways(fitted):
    name, model, tok, steerer, _, _ = fitted
    assert steerer.result["n_pairs"] >= 4
    data = preference_data(model, tok, PAIRS, preference_config(name, **FAST), progress=False)
    margin = {c: reward_margins(model, data, lambda c_: steerer.steer(model, c_), c, 16).mean().item() for c in (-1.0, 0.0, 1.0)}
    assert margin[0.0] == pytest.approx(0.0, abs=1e-4)  # the reference itself
    assert margin[1.0] > 0.5 and margin[-1.0] < -0.5
    if name == "bipo":  # bidirectional: both signs were drawn during training
        assert {h["sign"] for h in steerer.result["history"]} == {1.0, -1.0}
    assert steerer.result["val_margin"]["+1"] > steerer.result["val_margin"]["-1"]


def test_save_load_round_trip(fitted, tmp_path):
    name, model, _, steerer, ids, _ = fitted
    with torch.no_grad(), steerer.steer(model, 1.0):
        want = model(ids).logits
    steerer.save(tmp_path)
    fresh, _ = tiny_model("llama")
    loaded = load_steerer(fresh, tmp_path)
    assert loaded.name == name and loaded.params() == steerer.params()
    with torch.no_grad(), loaded.steer(fresh, 1.0):
        assert torch.allclose(fresh(ids).logits, want, atol=1e-5)


def test_selectable_in_compare_with_steps_and_seeds():
    cfgs = compare_configs(["bipo", "dpo_lora"], 2, "tiny-llama", "honesty", ["dd-honesty"], [-1.0, 0.0, 1.0], steps=3)
    assert [(c.method, c.seed) for c in cfgs] == [("bipo", 0), ("bipo", 1), ("dpo_lora", 0), ("dpo_lora", 1)]
    assert all(c.steerer_params()["steps"] == 3 for c in cfgs)
    assert cfgs[1].steerer_params()["seed"] == 1 and cfgs[0].fit_hash() != cfgs[1].fit_hash()


def test_bad_hyper_parameter_is_one_line():
    with pytest.raises(ValueError, match="bad hyper-parameters for method 'bipo': beta"):
        get_steerer("bipo", beta=-1.0)


def test_preference_data_scores_both_continuations_after_the_neutral_context():
    model, tok = tiny_model("llama")
    data = preference_data(model, tok, PAIRS, preference_config("bipo", **FAST), progress=False)
    n = len(data)
    for i in range(n):
        w, l = data.input_ids[i], data.input_ids[n + i]
        ctx_w = w[(data.attention_mask[i] == 1) & (data.target[i] == 0)]
        ctx_l = l[(data.attention_mask[n + i] == 1) & (data.target[n + i] == 0)]
        assert torch.equal(ctx_w, ctx_l)  # same x for y_w and y_l
        assert not torch.equal(w[data.target[i] == 1], l[data.target[n + i] == 1])  # different continuations
        text = tok.decode(ctx_w)
        assert "Pretend you're a person." in text and "honest" not in text
        assert any(sfx and text.endswith(sfx) for sfx in PAIRS.suffixes)  # x ends with the shared suffix


# Recorded from the hand-written `train_dpo` loop (commit 62dc095) that `loop.Loop` replaced: (sign, loss) per step.
OLD_LOOP = {
    "bipo": [(-1.0, 0.6931471824645996), (1.0, 0.6196125745773315), (1.0, 0.5851588845252991)],
    "dpo_lora": [(1.0, 0.6931471824645996), (1.0, 0.5974738597869873), (1.0, 0.46510574221611023)],
}


@pytest.mark.parametrize("name", ["bipo", "dpo_lora"])
def test_shared_loop_reproduces_the_old_dpo_loop(name):
    model, tok = tiny_model("llama")
    steerer = get_steerer(name, lr={"bipo": 0.05, "dpo_lora": 0.01}[name], **{**FAST, "steps": 3})
    steerer.fit(model, tok, PAIRS, progress=False)
    history = steerer.result["history"]
    assert [h["step"] for h in history] == [1, 2, 3]  # the loop counts completed steps (train_dpo logged 0, 1, 2)
    assert [h["sign"] for h in history] == [s for s, _ in OLD_LOOP[name]]
    assert [h["loss"] for h in history] == pytest.approx([l for _, l in OLD_LOOP[name]], rel=1e-6, abs=1e-7)


def _trained(steerer) -> list[torch.Tensor]:
    """The fitted tensors: BiPO's vectors or the LoRA factors."""
    if steerer.name == "bipo":
        return list(steerer.tensors.values())
    return [p.detach().clone() for p in steerer.handle.parameters()]


@pytest.mark.parametrize("name", ["bipo", "dpo_lora"])
def test_resume_after_a_crash_is_bit_identical(name, tmp_path, monkeypatch):
    """10 steps, a checkpoint every 8 (TrainConfig's default): a fit killed in step 10 resumes from step 8 and ends
    with the parameters and log of an unbroken fit; the checkpoint is safetensors + json (no pickle)."""
    hp = dict(lr={"bipo": 0.05, "dpo_lora": 0.01}[name], **{**FAST, "steps": 10})

    def fit(ckpt, resume=False):
        model, tok = tiny_model("llama")
        steerer = get_steerer(name, **hp)
        steerer.fit(model, tok, PAIRS, ckpt_dir=ckpt, resume=resume, progress=False)
        return steerer

    full = fit(tmp_path / "a")
    loss = DPOObjective.loss

    def crash(self, step, micro):
        if step == 9:
            raise KeyboardInterrupt("killed")
        return loss(self, step, micro)

    with monkeypatch.context() as m:
        m.setattr(DPOObjective, "loss", crash)
        with pytest.raises(KeyboardInterrupt):
            fit(tmp_path / "b")
    ckpt = tmp_path / "b"
    assert sorted(p.name for p in ckpt.iterdir()) == ["checkpoint.json", "checkpoint.safetensors"]
    meta = json.loads((ckpt / "checkpoint.json").read_text())
    assert meta["step"] == 8 and len(meta["history"]) == 8
    raw = (ckpt / "checkpoint.safetensors").read_bytes()
    header = json.loads(raw[8: 8 + int.from_bytes(raw[:8], "little")])  # safetensors: length, json header, data
    assert {k.split(".")[0] for k in header if k != "__metadata__"} == {"param", "best", "rng", "opt"}
    resumed = fit(ckpt, resume=True)
    assert all(torch.equal(a, b) for a, b in zip(_trained(full), _trained(resumed)))
    assert resumed.result["history"] == full.result["history"]


def test_loop_stop_after_then_resume_is_bit_identical(tmp_path):
    """`Loop.run(stop_after=...)` (the trainer's crash simulation) on the BiPO objective, then resume."""
    model, tok = tiny_model("llama")
    cfg = preference_config("bipo", lr=0.05, **{**FAST, "steps": 10})
    data = preference_data(model, tok, PAIRS, cfg, progress=False)
    d = model.get_input_embeddings().embedding_dim
    layer = decoder_layers(model)[1]

    def run(ckpt, **kw):
        v = torch.nn.Parameter(torch.zeros(d))
        objective = DPOObjective(model, data, [v], lambda c: add_to_outputs([(layer, v)], c), cfg, bidirectional=True)
        return v, Loop(objective, loop_config(cfg), ckpt, progress=False).run(**kw)

    want, full = run(tmp_path / "a")
    _, crashed = run(tmp_path / "b", stop_after=9)
    assert len(crashed.history) == 9
    got, resumed = run(tmp_path / "b", resume=True)
    assert torch.equal(want, got) and resumed.history == full.history
