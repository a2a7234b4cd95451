"""InnerPiSSA adapter: exactness at c = 0, reversibility, merge, save/load, gradients, bad input."""

import pytest
import torch

from innerpissa.adapter import (
    AdapterMismatchError, InnerPiSSALinear, adapter_layers, attach, collect_module_inputs, load_adapter, merge,
    remove, rotation, save_adapter, skew, steer, trainable_parameters,
)
from innerpissa.adapter.layer import contrast_dims
from innerpissa.batching import encode_pairs
from innerpissa.concepts import load_concept, make_pairs
from innerpissa.config import AdapterConfig
from innerpissa.testing import ARCHS, tiny_model

IDS = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))


def _cfg(**kw):
    base = dict(r=16, layer_range=(0.0, 1.0), init_std=0.05)
    base.update(kw)
    return AdapterConfig(**base)


@pytest.mark.parametrize("arch", ARCHS)
def test_c0_reproduces_base_logits_and_remove_restores(arch):
    model, _ = tiny_model(arch)
    base = model(IDS).logits
    originals = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    attach(model, _cfg(rotate_u=True, scale="tanh"))
    with steer(model, 0.0):
        steered0 = model(IDS).logits
    assert torch.allclose(steered0, base, rtol=1e-5, atol=1e-6)
    with steer(model, 1.0):
        assert (model(IDS).logits - base).abs().max() > 1e-3  # and it does steer
    remove(model)
    assert not adapter_layers(model)
    assert all(model.get_submodule(n) is m for n, m in originals.items())
    assert torch.equal(model(IDS).logits, base)


def test_rotation_is_orthogonal_and_reversible():
    torch.manual_seed(0)
    A = skew(torch.randn(8, 8), max_angle=0.3)
    assert torch.allclose(A, -A.T)
    assert A.abs().max() <= 0.3  # soft clamp
    for kind in ("cayley", "matrix_exp"):
        R = rotation(A, 0.7, kind)
        assert torch.allclose(R @ R.T, torch.eye(8), atol=1e-5)
        assert torch.allclose(rotation(A, -0.7, kind), R.T, atol=1e-5)  # R(-c) = R(c)^-1
        assert torch.allclose(rotation(A, 0.0, kind), torch.eye(8))
    # Cayley by hand for a 2x2 generator [[0, -a], [a, 0]]: rotation by angle 2·atan(a/2)
    a = 0.4
    A2 = torch.tensor([[0.0, -a], [a, 0.0]])
    ang = 2 * torch.atan(torch.tensor(a / 2))
    expect = torch.tensor([[torch.cos(ang), -torch.sin(ang)], [torch.sin(ang), torch.cos(ang)]])
    assert torch.allclose(rotation(A2, 1.0), expect, atol=1e-6)


@pytest.mark.parametrize("scale", ["mult", "add", "tanh", "none"])
def test_layer_matches_explicit_formula(scale):
    torch.manual_seed(0)
    lin = torch.nn.Linear(10, 7, bias=True)
    layer = InnerPiSSALinear(lin, _cfg(r=4, rotate_u=True, scale=scale, init_std=0.3))
    x = torch.randn(3, 10)
    c = 0.8
    U, S, V = layer.U, layer.S, layer.V
    W_res = lin.weight - U @ torch.diag(S) @ V.T
    Rv, Ru = layer.rotations(c)
    Sp = {"mult": S * torch.exp(c * layer.lam) if layer.lam is not None else S,
          "add": S + c * layer.lam if layer.lam is not None else S,
          "tanh": S + c * torch.tanh(layer.lam) * S if layer.lam is not None else S,
          "none": S}[scale]
    expect = ((x @ V @ Rv) * Sp) @ (U @ Ru).T + x @ W_res.T + lin.bias
    layer.coeff = c
    assert torch.allclose(layer(x), expect, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_merge_matches_steered_and_reloads_without_innerpissa(arch, tmp_path):
    model, _ = tiny_model(arch)
    attach(model, _cfg(rotate_u=True))
    with steer(model, 0.8):
        steered = model(IDS).logits
    merge(model, 0.8)
    assert not adapter_layers(model)
    merged = model(IDS).logits
    assert ((merged - steered).abs().max() / steered.abs().max()) < 1e-4
    model.save_pretrained(tmp_path / "m")
    from transformers import AutoModelForCausalLM

    again = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert torch.allclose(again(IDS).logits, merged, atol=1e-5)


def test_save_load_bit_identical_and_wrong_base_fails(tmp_path):
    model, _ = tiny_model("llama")
    attach(model, _cfg(scale="add"))
    with steer(model, -1.3):
        before = model(IDS).logits
    save_adapter(model, tmp_path / "a")
    fresh, _ = tiny_model("llama")
    load_adapter(fresh, tmp_path / "a")
    for (n, a), (_, b) in zip(adapter_layers(model).items(), adapter_layers(fresh).items()):
        for key in ("U", "S", "V", "P_v", "lam"):
            assert torch.equal(getattr(a, key), getattr(b, key)), (n, key)
    with steer(fresh, -1.3):
        assert torch.equal(fresh(IDS).logits, before)
    other, _ = tiny_model("llama", seed=1)  # same shapes, different weights
    with pytest.raises(AdapterMismatchError, match="trained on base model"):
        load_adapter(other, tmp_path / "a")
    qwen, _ = tiny_model("qwen2")
    with pytest.raises(AdapterMismatchError):
        load_adapter(qwen, tmp_path / "a")


def test_only_adapter_params_get_gradients():
    model, _ = tiny_model("qwen2")
    attach(model, _cfg(rotate_u=True))
    with steer(model, 1.0):
        model(IDS).logits.sum().backward()
    params = trainable_parameters(model)
    assert params and all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    ids = {id(p) for p in params}
    assert all(p.grad is None for p in model.parameters() if id(p) not in ids)


def test_steer_restores_on_exception():
    model, _ = tiny_model("llama")
    attach(model, _cfg())
    with pytest.raises(RuntimeError):
        with steer(model, 2.0):
            raise RuntimeError("boom")
    assert all(layer.coeff == 0.0 for layer in adapter_layers(model).values())


def test_bad_config_errors_list_valid_names():
    model, _ = tiny_model("llama")
    with pytest.raises(ValueError, match="valid linear modules: .*down_proj"):
        attach(model, _cfg(target_modules=("nope_proj",)))
    with pytest.raises(ValueError, match="out of range"):
        attach(model, _cfg(layers=(0, 99)))
    with pytest.raises(ValueError):
        AdapterConfig(rotate_v=False, rotate_u=False, scale="none")


def test_data_aware_dims_pick_contrast_directions_by_construction():
    # W = diag(8, 7, ..., 1): U = V = I, so direction i is input/output coordinate i with singular value 8 - i.
    S = torch.arange(8, 0, -1, dtype=torch.float32)
    lin = torch.nn.Linear(8, 8, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.diag(S))
    g = torch.Generator().manual_seed(0)
    x_rej = torch.randn(6, 3, 8, generator=g)
    # chosen and rejected inputs differ only along coordinates 5 and 6 (singular values 3 and 2): the output
    # difference W(x_cho - x_rej) lies along u_5, u_6, so those are the contrast directions, not the top-2 (0, 1)
    x_cho = x_rej.clone()
    x_cho[..., 5] += 4.0
    x_cho[..., 6] -= 5.0
    layer = InnerPiSSALinear(lin, _cfg(r=2, dims="data"), dims=contrast_dims(S, torch.eye(8), x_cho, x_rej, 2))
    assert torch.equal(layer.S, torch.tensor([3.0, 2.0]))
    assert torch.allclose(layer.V.abs(), torch.eye(8)[:, [5, 6]])
    # equal-size differences along every coordinate: the output moves most along the largest singular values
    same = contrast_dims(S, torch.eye(8), x_rej + 1.0, x_rej, 3)
    assert same.tolist() == [0, 1, 2]
    # through attach on a real model: a difference confined to one input direction of o_proj is picked first
    model, _ = tiny_model("llama")
    name = "model.layers.1.self_attn.o_proj"
    W = model.get_submodule(name).weight.detach()
    _, _, Vh = torch.linalg.svd(W, full_matrices=False)
    v_last = Vh[-1]  # the weakest input direction: top-r would never keep it
    base_in = torch.randn(4, 2, W.shape[1], generator=g)
    contrast = {name: (base_in + 3.0 * v_last, base_in)}
    layers = attach(model, _cfg(r=4, dims="data", layers=(1,), target_modules=("o_proj",)), contrast=contrast)
    kept = layers[name].V  # [in, 4]
    assert (kept.T @ v_last).abs().max() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("scale", ["mult", "add", "tanh"])
@pytest.mark.parametrize("kind", ["cayley", "matrix_exp"])
def test_tiny_c_is_first_order_in_the_adapter_parameters(scale, kind):
    """c = 1e-4 runs the full adapter math; the change must match the hand-derived derivative at c = 0:
    d/dc [((xV R_v) ⊙ S') R_uᵀ Uᵀ] = [(xV A_v) ⊙ S + (xV) ⊙ S'(0)' + ((xV) ⊙ S) A_uᵀ] Uᵀ, A = skew(P), R'(0) = A."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(10, 7, bias=True)
    layer = InnerPiSSALinear(lin, _cfg(r=4, rotate_u=True, scale=scale, rotation=kind, init_std=0.3)).double()
    x = torch.randn(3, 10, dtype=torch.float64)
    z, S, U = x @ layer.V, layer.S, layer.U
    Av, Au = skew(layer.P_v, layer.cfg.max_angle), skew(layer.P_u, layer.cfg.max_angle)
    dS = {"mult": S * layer.lam, "add": layer.lam, "tanh": torch.tanh(layer.lam) * S}[scale]
    parts = [(z @ Av) * S @ U.T, (z * dS) @ U.T, ((z * S) @ Au.T) @ U.T]
    assert all(p.abs().max() > 1e-3 for p in parts)  # each parameter group contributes
    deriv = sum(parts)
    base, h = layer.base_layer(x), 1e-4
    out = {}
    for c in (h, -h):
        layer.coeff = c
        out[c] = layer(x)
        one_sided = (out[c] - base) / c  # = deriv + O(c): off by at most ~c·|second derivative|
        assert (one_sided - deriv).abs().max() < 1e-3 * deriv.abs().max()
        assert torch.allclose(layer.delta_weight(c) @ x.T, (out[c] - base).T, atol=1e-10)  # merge path too
    assert torch.allclose((out[h] - out[-h]) / (2 * h), deriv, rtol=1e-6, atol=1e-8)  # central: deriv + O(c²)


def test_steering_is_continuous_at_c0():
    model, _ = tiny_model("llama")
    attach(model, _cfg(rotate_u=True, scale="tanh"))
    with torch.no_grad():
        base = model(IDS).logits
        slopes = []
        for c in (1e-1, 1e-2, 1e-3):
            with steer(model, c):
                slopes.append(((model(IDS).logits - base).norm() / c).item())
    # the change shrinks linearly with c (a finite directional derivative), no jump at 0
    assert slopes[0] > 0 and slopes[1] == pytest.approx(slopes[2], rel=0.05)
    assert slopes[0] == pytest.approx(slopes[2], rel=0.5)
