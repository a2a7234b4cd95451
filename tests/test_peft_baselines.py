"""LoRA / DoRA / PiSSA baselines on peft's own layers: c = 0 identity, exact c-scaling of the explicit ΔW,
agreement with a peft model built by `get_peft_model`, flip, save/load, resume, bad input."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import Linear as PeftLoraLinear

from innerpissa.adapter import AdapterMismatchError
from innerpissa.concepts import load_concept, make_pairs
from innerpissa.config import LossConfig, TrainConfig
from innerpissa.steerers import get_steerer, load_steerer
from innerpissa.steerers.peft_lora import ADAPTER, INIT, PeftTrainable, trainable_tensors
from innerpissa.testing import tiny_model
from innerpissa.train import Trainer

IDS = torch.randint(0, 1000, (2, 10), generator=torch.Generator().manual_seed(1))
TRAIN, VAL = make_pairs(load_concept("honesty"))
HP = dict(r=4, layer_range=(0.0, 1.0), loss=dict(loss_r=8, last_n_tokens=2), train=dict(steps=3, batch_size=4, n_val=4))
VARIANTS = ["lora", "dora", "pissa"]


def _moved(variant: str, arch: str = "qwen2", alpha: float = 8.0):
    """A tiny model with the variant's peft layers attached and their parameters moved off the init."""
    model, tok = tiny_model(arch)
    h = PeftTrainable(model, variant, 4, alpha, ("o_proj", "down_proj"), (0.0, 1.0), seed=0)
    h.attach()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in h.parameters():
            p.add_(0.2 * p.abs().mean() * torch.randn(p.shape, generator=g) + 0.05 * torch.randn(p.shape, generator=g))
    return model, tok, h


def _explicit_delta(layer, variant: str, s: float) -> torch.Tensor:
    """W'(θ) − W'(θ₀) written out by hand from the peft factors (the module docstring's formulas)."""
    W = layer.base_layer.weight
    A, B = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
    if variant == "lora":
        return s * B @ A
    if variant == "pissa":
        return s * (B @ A - layer.lora_B[INIT].weight @ layer.lora_A[INIT].weight)
    m = layer.lora_magnitude_vector[ADAPTER].weight
    Wp = W + s * B @ A
    return (m / Wp.norm(dim=1)).unsqueeze(1) * Wp - W


@pytest.mark.parametrize("variant", VARIANTS)
def test_c_scaling_is_exact_against_explicit_delta(variant):
    model, _, h = _moved(variant)
    name, layer = next(iter(h.layers().items()))
    x = torch.randn(3, layer.in_features)
    with torch.no_grad():
        base = layer.base_layer(x)
        assert torch.equal(layer(x), base)  # at rest: the base layer, bit-exactly
        dW = _explicit_delta(layer, variant, 8.0 / 4)
        for c in (1.0, -1.0, 0.37, -2.0, 1e-4):
            with h.steer(c):
                assert torch.allclose(layer(x), base + c * x @ dW.T, atol=1e-5, rtol=1e-4), (variant, c)
        with h.steer(1e-4):  # first order at tiny c: the W'(θ₀) subtraction is exercised, not skipped
            slope = (layer(x) - base) / 1e-4
        assert torch.allclose(slope, x @ dW.T, rtol=1e-2, atol=1e-2)
        assert dW.abs().max() > 1e-2  # the parameters moved: the check above is not 0 == 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_model_logits_continuous_at_zero_and_flip(variant):
    model, _, h = _moved(variant)
    model.double()  # float64 weights (transformers' RMSNorm still rounds to float32)
    with torch.no_grad():
        base = model(IDS).logits
        with h.steer(0.0):
            assert torch.equal(model(IDS).logits, base)
        d = {}
        for c in (1e-4, -1e-4, 1e-3, 1.0, -1.0):
            with h.steer(c):
                d[c] = model(IDS).logits - base
        assert d[1.0].abs().max() > 1e-2
        ratio = d[1e-4].norm() / d[1e-3].norm()  # linear near 0: continuous, no jump from a missing W'(θ₀) term
        assert 0.099 < float(ratio) < 0.101
        # odd to first order (the floor is RMSNorm's float32 rounding of the hidden state, ~1e-5 here)
        assert (d[1e-4] + d[-1e-4]).norm() < 2e-2 * d[1e-4].norm()
        h.flip()
        with h.steer(1.0):
            assert torch.allclose(model(IDS).logits - base, d[-1.0], atol=1e-5)
        with h.steer(-1.0):
            assert torch.allclose(model(IDS).logits - base, d[1.0], atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_c1_equals_a_peft_model_from_get_peft_model(variant):
    # peft's own pipeline (get_peft_model: PiSSA residual base, DoRA magnitude) with our trained A, B, m
    model, _, h = _moved(variant, alpha=6.0)
    fresh, _ = tiny_model("qwen2")
    cfg = LoraConfig(r=4, lora_alpha=6.0, target_modules=["o_proj", "down_proj"], lora_dropout=0.0,
                     use_dora=variant == "dora", init_lora_weights="pissa" if variant == "pissa" else True)
    pm = get_peft_model(copy.deepcopy(fresh), cfg)
    with torch.no_grad():
        for name, layer in h.layers().items():
            theirs = pm.base_model.model.get_submodule(name)
            for ours_p, their_p in zip(trainable_tensors(layer), trainable_tensors(theirs)):
                their_p.copy_(ours_p)
        with h.steer(1.0):
            ours = model(IDS).logits
        assert torch.allclose(pm(IDS).logits, ours, atol=1e-4)
        assert (ours - fresh(IDS).logits).abs().max() > 1e-2
        if variant == "lora":  # and peft's set_scale(c) is our c
            for layer in pm.base_model.model.modules():
                if hasattr(layer, "set_scale"):
                    layer.set_scale(ADAPTER, -0.6)
            with h.steer(-0.6):
                assert torch.allclose(pm(IDS).logits, model(IDS).logits, atol=1e-4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_fit_steer_save_reload(variant, tmp_path):
    model, tok = tiny_model("qwen2")
    base = model(IDS).logits
    s = get_steerer(variant, **HP)
    with pytest.raises(ValueError, match="not fitted"):
        s.steer(model, 1.0)
    s.fit(model, tok, TRAIN.subset(list(range(16))), VAL.subset(list(range(4))), progress=False)
    assert not any(isinstance(m, PeftLoraLinear) for m in model.modules())  # at rest: the plain base layers
    with torch.no_grad():
        with s.steer(model, 0.0):
            assert torch.equal(model(IDS).logits, base)
        with s.steer(model, 1.0):
            assert sum(isinstance(m, PeftLoraLinear) for m in model.modules()) == 8  # 4 layers x 2 modules
            plus = model(IDS).logits
            with s.steer(model, 0.5):
                pass
            assert torch.equal(model(IDS).logits, plus)  # the outer coefficient is back, not 0
        assert torch.equal(model(IDS).logits, base)
    assert (plus - base).abs().max() > 1e-4
    s.handle.flip()  # a flipped sign is saved and restored
    s.save(tmp_path)
    fresh, _ = tiny_model("qwen2")
    again = load_steerer(fresh, tmp_path)
    with torch.no_grad(), again.steer(fresh, -1.0):
        assert torch.allclose(fresh(IDS).logits, plus, atol=1e-6)
    with pytest.raises(ValueError, match="another model"):
        again.steer(model, 1.0)
    with pytest.raises(ValueError, match="finite"):
        again.steer(fresh, float("nan")).__enter__()
    other, _ = tiny_model("qwen2", seed=1)
    with pytest.raises(AdapterMismatchError, match="trained on base model"):
        load_steerer(other, tmp_path)
    assert not any(isinstance(m, PeftLoraLinear) for m in other.modules())  # refused before any surgery


def test_init_uses_no_global_rng_and_is_seeded():
    def init(seed: int, global_seed: int) -> torch.Tensor:
        model, _ = tiny_model("qwen2")  # (tiny_model seeds the global RNG itself)
        torch.manual_seed(global_seed)
        state = torch.get_rng_state()
        h = PeftTrainable(model, "lora", 4, 8.0, ("o_proj", "down_proj"), (0.0, 1.0), seed=seed)
        h.attach()
        assert torch.equal(torch.get_rng_state(), state)  # attach drew from a forked RNG, not the caller's
        return torch.cat([p.flatten() for p in h.parameters()])

    a = init(0, 1)
    assert torch.equal(a, init(0, 2))  # the init depends on our seed only
    assert not torch.equal(a, init(1, 1))


@pytest.mark.parametrize("hp, message", [
    ({"rr": 4}, "rr"),
    ({"train": {"stpes": 3}}, "train.stpes"),
    ({"loss": {"tua": 0.1}}, "loss.tua"),
])
def test_hyperparameter_typos_raise_naming_the_key(hp, message):
    with pytest.raises(ValueError, match=message):
        get_steerer("lora", **hp)


@pytest.mark.parametrize("variant", VARIANTS)
def test_resume_is_bit_identical(variant, tmp_path):
    def trainer(ckpt):
        model, tok = tiny_model("llama")
        h = PeftTrainable(model, variant, 4, 8.0, ("o_proj", "down_proj"), (0.0, 1.0), seed=0)
        tc = TrainConfig(steps=4, batch_size=4, n_train=16, n_val=4, eval_every=2, checkpoint_every=2, lr=5e-3)
        return Trainer(model, tok, *make_pairs(load_concept("honesty")), h, LossConfig(loss_r=8, last_n_tokens=2), tc,
                       ckpt_dir=ckpt, progress=False), h

    full, hf = trainer(tmp_path / "a")
    full.run()
    crashed, _ = trainer(tmp_path / "b")
    crashed.run(stop_after=2)
    resumed, hr = trainer(tmp_path / "b")
    resumed.run(resume=True)
    assert hf.sign == hr.sign
    assert all(torch.equal(a, b) for a, b in zip(hf.parameters(), hr.parameters()))
