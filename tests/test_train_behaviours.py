"""Trainer behaviours with a known answer: the reference cache changes nothing, gradient accumulation equals the
large batch, early stopping keeps the best validated adapter, dims='data' and matrix_exp work through training."""

import pytest
import torch

from innerpissa import adapter as A
from innerpissa.adapter import adapter_layers, trainable_parameters
from innerpissa.adapter.layer import contrast_dims, rotation
from innerpissa.concepts import load_concept, make_pairs
from innerpissa.config import AdapterConfig, LossConfig, TrainConfig
from innerpissa.objectives.reprpo import suffix_span
from innerpissa.testing import tiny_model
from innerpissa.train import Trainer

PAIRS = make_pairs(load_concept("honesty"))
ACFG = AdapterConfig(r=8, layer_range=(0.0, 1.0))
LCFG = LossConfig(loss_r=8, last_n_tokens=2)


def _trainer(acfg=ACFG, **tkw):
    kw = dict(steps=4, batch_size=4, n_train=16, n_val=4, eval_every=2, lr=5e-3)
    kw.update(tkw)
    model, tok = tiny_model("llama")
    return Trainer(model, tok, *PAIRS, acfg, LCFG, TrainConfig(**kw), progress=False)


def test_cached_reference_equals_recomputed():
    probe = _trainer()
    probe.prepare()
    o = probe.objective
    idx = o.batches[0]
    b = o.encode(o.train_pairs, idx)
    from_cache = o._ref_for(idx, o.cache, o.train_pairs, suffix_span(b))
    fresh = o._reference(o.train_pairs, idx)  # the same micro-batch, forwarded now
    for key in ("hs", "nll", "mask"):
        assert torch.allclose(getattr(from_cache, key), getattr(fresh, key), atol=1e-5), key
    cached, live = _trainer(), _trainer(cache_reference=False)
    rc, rl = cached.run(), live.run()
    for hc, hl in zip(rc.history, rl.history):
        assert hc["loss"] == pytest.approx(hl["loss"], rel=1e-4, abs=1e-6)
    for pc, pl in zip(trainable_parameters(cached.objective.model), trainable_parameters(live.objective.model)):
        assert torch.allclose(pc, pl, atol=1e-5)


def test_grad_accum_equals_the_large_batch_for_a_per_pair_loss():
    """The accumulation mechanics: with a loss that is a mean of per-pair terms, 2 micro-batches of 4 give the
    gradient of one batch of 8 (same pairs: the batch order splits one permutation). ReprPO's own terms are
    batch statistics (ratio of means, hinge of means), for which accumulation is the mean of micro-batch losses."""
    def per_pair_loss(tr):
        def loss(b, ref, u):
            with tr.objective._ctx(1.0):
                out = tr.objective.model(**b.model_inputs(), logits_to_keep=1)
            return out.logits[:, -1].float().pow(2).mean(), {"loss": 0.0}
        return loss

    grads = []
    for bs, ga in ((8, 1), (4, 2)):
        tr = _trainer(batch_size=bs, grad_accum=ga, steps=1)
        tr.prepare()
        tr.objective.step_loss = per_pair_loss(tr)
        tr.optimizer_step(0)
        grads.append([p.grad.clone() for p in trainable_parameters(tr.objective.model)])
        if ga == 2:
            assert sorted(tr.objective.batches[0] + tr.objective.batches[1]) == sorted(big)
        big = tr.objective.batches[0]
    for g8, g44 in zip(*grads):
        assert torch.allclose(g8, g44, rtol=1e-4, atol=1e-7)


def test_patience_stops_early_and_keeps_the_best_validated_adapter(monkeypatch):
    tr = _trainer(steps=12, eval_every=1, patience=2)
    scripted = iter([3.0, 2.0, 2.5, 2.6] + [0.1] * 9)  # best at step 2, then 2 worse
    monkeypatch.setattr(tr.objective, "validate", lambda u: (next(scripted), 1.0))
    after_step = {}
    step = tr.loop.optimizer_step

    def record(i):
        out = step(i)
        after_step[i + 1] = [p.detach().clone() for p in trainable_parameters(tr.objective.model)]
        return out

    monkeypatch.setattr(tr.loop, "optimizer_step", record)
    res = tr.run()
    assert len(res.history) == 4 and sorted(after_step) == [1, 2, 3, 4]  # stopped after the 2nd bad validation
    assert (res.best_step, res.best_val) == (2, 2.0)
    for p, best in zip(trainable_parameters(tr.objective.model), after_step[2]):
        assert torch.equal(p, best)  # the step-2 adapter, not the last one


def test_data_dims_through_the_trainer_use_the_training_pairs():
    acfg = AdapterConfig(r=4, layer_range=(0.0, 1.0), dims="data")
    tr = _trainer(acfg, steps=2)
    res = tr.run()
    assert len(res.history) == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in res.history)
    # the kept directions are the contrast directions of the trainer's first 64 training pairs
    model, tok = tiny_model("llama")
    names = A.target_names(model, acfg)
    pairs = tr.objective.train_pairs
    b = tr.objective.encode(pairs, list(range(min(64, len(pairs)))))
    contrast = A.collect_module_inputs(model, names, b.model_inputs(), len(b) // 2, LCFG.last_n_tokens)
    differs = 0
    for name, layer in adapter_layers(tr.objective.model).items():
        W = layer.base_layer.weight.detach().float()
        _, S, Vh = torch.linalg.svd(W, full_matrices=False)
        dims = contrast_dims(S, Vh.T, *contrast[name], 4)
        assert torch.equal(layer.S, S[dims]), name
        differs += not torch.equal(dims, torch.arange(4))
    assert differs > 0  # not just the top-4 singular directions


def test_matrix_exp_rotation_by_hand_and_through_training():
    a, c = 0.4, 0.7
    A2 = torch.tensor([[0.0, -a], [a, 0.0]], dtype=torch.float64)
    ang = torch.tensor(c * a, dtype=torch.float64)  # exp(c·A) for this generator: rotation by exactly c·a
    expect = torch.stack([torch.stack([ang.cos(), -ang.sin()]), torch.stack([ang.sin(), ang.cos()])])
    assert torch.allclose(rotation(A2, c, "matrix_exp"), expect, atol=1e-12)
    # first order it agrees with Cayley (both are I + cA + O(c²)), beyond it they differ
    h = 1e-4
    assert torch.allclose(rotation(A2, h, "matrix_exp"), rotation(A2, h, "cayley"), atol=1e-10)
    assert not torch.allclose(rotation(A2, 1.0, "matrix_exp"), rotation(A2, 1.0, "cayley"), atol=1e-4)
    tr = _trainer(AdapterConfig(r=8, layer_range=(0.0, 1.0), rotation="matrix_exp"), steps=4)
    res = tr.run()
    assert res.history[-1]["shift_pos"] > 0 > res.history[-1]["shift_neg"]
    for layer in adapter_layers(tr.objective.model).values():
        R, _ = layer.rotations(1.0)
        assert torch.allclose(R @ R.T, torch.eye(R.shape[0]), atol=1e-5)


def test_onecycle_schedule_runs_at_ten_steps():
    tr = _trainer(steps=10, eval_every=10, n_train=8, batch_size=4)  # torch's OneCycleLR divides by 0 at exactly 10
    assert len(tr.run().history) == 10
