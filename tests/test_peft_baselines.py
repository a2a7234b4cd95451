"""LoRA / DoRA / PiSSA baselines: c = 0 identity, agreement with peft's own forward, save/load."""

import pytest
import torch

from innerpissa.concepts import load_concept, make_pairs
from innerpissa.steerers import get_steerer, load_steerer
from innerpissa.steerers.peft_lora import ADAPTER, SignedDeltaLinear
from innerpissa.testing import tiny_model

IDS = torch.randint(0, 1000, (2, 10), generator=torch.Generator().manual_seed(1))
TRAIN, VAL = make_pairs(load_concept("honesty"))
HP = dict(r=4, layer_range=(0.0, 1.0), loss=dict(loss_r=8, last_n_tokens=2), train=dict(steps=3, batch_size=4, n_val=4))


@pytest.mark.parametrize("variant", ["lora", "dora", "pissa"])
def test_c0_identity_steers_and_reloads(variant, tmp_path):
    model, tok = tiny_model("qwen2")
    base = model(IDS).logits
    s = get_steerer(variant, **HP)
    s.fit(model, tok, TRAIN.subset(list(range(16))), VAL.subset(list(range(4))), progress=False)
    with s.steer(model, 0.0):
        assert torch.equal(model(IDS).logits, base)
    with s.steer(model, 1.0):
        plus = model(IDS).logits
    assert (plus - base).abs().max() > 1e-4
    s.save(tmp_path)
    fresh, _ = tiny_model("qwen2")
    again = load_steerer(fresh, tmp_path)
    with again.steer(fresh, 1.0):
        assert torch.allclose(fresh(IDS).logits, plus, atol=1e-6)


def test_lora_delta_equals_peft_forward_with_scaling_c():
    torch.manual_seed(0)
    lin = torch.nn.Linear(12, 6)
    layer = SignedDeltaLinear(lin, "lora", r=3, alpha=6.0, seed=0)
    with torch.no_grad():
        layer.peft.lora_B[ADAPTER].weight.normal_()  # peft inits B = 0; give it a value
    x = torch.randn(4, 12)
    c = -0.7
    layer.coeff = c
    ours = layer(x)
    peft_layer = layer.peft
    peft_layer.scaling[ADAPTER] = c * 6.0 / 3
    with torch.no_grad():
        peft_layer.get_base_layer().weight.copy_(lin.weight)
        peft_layer.get_base_layer().bias = lin.bias
    assert torch.allclose(ours, peft_layer(x), atol=1e-5)


def test_pissa_init_is_the_principal_part():
    torch.manual_seed(0)
    lin = torch.nn.Linear(10, 8, bias=False)
    layer = SignedDeltaLinear(lin, "pissa", r=3, alpha=3.0, seed=0)
    p = layer.peft
    BA = p.lora_B[ADAPTER].weight @ p.lora_A[ADAPTER].weight
    U, S, Vh = torch.linalg.svd(lin.weight.detach())
    assert torch.allclose(BA, U[:, :3] @ torch.diag(S[:3]) @ Vh[:3], atol=1e-5)
    assert torch.allclose(layer.W0, lin.weight, atol=1e-5)  # W_res + BA = W
