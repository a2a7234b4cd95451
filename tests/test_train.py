"""ReprPO training on a tiny model: learns, is reversible in sign, resumes exactly, fails loudly."""

import pytest
import torch

from innerpissa import loss as L
from innerpissa.adapter import steer, trainable_parameters
from innerpissa.concepts import load_concept, make_pairs
from innerpissa.config import AdapterConfig, LossConfig, TrainConfig
from innerpissa.loop import TrainingDiverged
from innerpissa.testing import tiny_model
from innerpissa.train import Trainer

PAIRS = make_pairs(load_concept("honesty"))
ACFG = AdapterConfig(r=8, layer_range=(0.0, 1.0))
LCFG = LossConfig(loss_r=8, last_n_tokens=2)


def _trainer(tmp=None, arch="llama", **tkw):
    kw = dict(steps=8, batch_size=4, n_train=64, n_val=8, eval_every=4, checkpoint_every=2, lr=5e-3)
    kw.update(tkw)
    model, tok = tiny_model(arch)
    return Trainer(model, tok, *PAIRS, ACFG, LCFG, TrainConfig(**kw), ckpt_dir=tmp, progress=False)


def _fixed_batch_loss(tr, idx):
    """The training loss of the pairs `idx` at the adapter's current parameters (same batch, same reference)."""
    o = tr.objective
    b = o.encode(o.train_pairs, idx)
    with torch.no_grad():
        return float(o.step_loss(b, o._reference(o.train_pairs, idx), o.u)[0])


def _val_shift_by_hand(tr):
    """Mean (+1) − (−1) projection of the validation pairs on u, over |reference projection|, from the model's own
    hidden states (output_hidden_states, not the trainer's hook), in units of the mean |reference projection|."""
    o = tr.objective
    b = o.encode(o.val_pairs, list(range(len(o.val_pairs))))
    n, N = len(b) // 2, o.lcfg.last_n_tokens

    def proj(c):
        with torch.no_grad(), steer(o.model, c):
            h = o.model(**b.model_inputs(), output_hidden_states=True).hidden_states[o.li + 1][:, -N:].float()
        z = h @ o.basis @ o.u  # [2n, N]
        return (z[:n] - z[n:]).mean(-1)

    ref = proj(0.0)
    return float((proj(1.0) - proj(-1.0)).mean() / ref.abs().mean())


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_training_reduces_loss_and_separates_both_ways(arch):
    init = _trainer(arch=arch, steps=20, eval_every=10)
    init.prepare()  # the same seeded initial adapter the trained run starts from
    tr = _trainer(arch=arch, steps=20, eval_every=10)
    res = tr.run()
    if res.sign_flipped:
        tr.objective.adapter.flip()  # compare the parameters training produced, before orientation
    idx = tr.objective.batches[0]
    after = _fixed_batch_loss(tr, idx)
    with torch.no_grad():
        for p, p0 in zip(trainable_parameters(tr.objective.model), trainable_parameters(init.objective.model)):
            p.copy_(p0)
    assert _fixed_batch_loss(tr, idx) > after  # the same batch's loss is lower after training than at init
    last = res.history[-1]
    assert last["shift_pos"] > 0 > last["shift_neg"]  # c=+1 pushes the projection up, c=-1 down


def test_orientation_makes_plus_c_move_validation_pairs_up():
    tr = _trainer(steps=12)
    res = tr.run()
    by_hand = _val_shift_by_hand(tr)
    assert by_hand > 0  # after orientation +c moves held-out pairs toward the positive persona, measured afresh
    assert res.val_shift == pytest.approx(by_hand, rel=1e-3)  # and the record reports that very number


def test_resume_after_interruption_gives_the_same_adapter(tmp_path):
    full = _trainer(tmp_path / "a")
    full.run()
    want = [p.detach().clone() for p in trainable_parameters(full.objective.model)]
    crashed = _trainer(tmp_path / "b")
    crashed.run(stop_after=4)  # checkpoint at step 4 exists, then "crash"
    resumed = _trainer(tmp_path / "b")
    res = resumed.run(resume=True)
    got = trainable_parameters(resumed.objective.model)
    assert len(res.history) == 8
    assert all(torch.equal(a, b) for a, b in zip(want, got))


def test_nan_loss_stops_names_term_and_rolls_back(tmp_path, monkeypatch):
    tr = _trainer(tmp_path)
    real = L.coherence
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        return real(*a, **k) if calls["n"] < 11 else torch.tensor(float("nan"))

    monkeypatch.setattr(L, "coherence", flaky)
    with pytest.raises(TrainingDiverged, match="coh_pos.*rolled back"):
        tr.run()
    from safetensors.torch import load_file

    ckpt = load_file(str(tmp_path / "checkpoint.safetensors"))
    for i, p in enumerate(trainable_parameters(tr.objective.model)):
        assert torch.equal(p.detach(), ckpt[f"param.{i}"])


def test_orientation_flips_a_reversed_adapter():
    tr = _trainer(steps=12)
    res = tr.run()
    with torch.no_grad():
        for p in trainable_parameters(tr.objective.model):
            p.neg_()  # now +c moves the wrong way
    _, shift = tr.objective.validate(tr.objective.u)
    assert shift < 0
    tr.objective.orient(res)
    assert res.sign_flipped and res.val_shift == pytest.approx(-shift, rel=1e-4)


def test_terms_can_be_switched_off():
    model, tok = tiny_model("llama")
    lcfg = LossConfig(loss_r=8, last_n_tokens=2, coherence=False, monotonic=False)
    tr = Trainer(model, tok, *PAIRS, ACFG, lcfg, TrainConfig(steps=2, batch_size=2, n_val=4), progress=False)
    res = tr.run()
    assert all(h["coh_pos"] == 0 and h["mono"] == 0 for h in res.history)
    assert res.history[-1]["loss"] == pytest.approx(res.history[-1]["sep_pos"] + res.history[-1]["sep_neg"], abs=1e-6)
