"""Export to a standard peft LoRA adapter: plain `PeftModel.from_pretrained` on the base gives our steered logits."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel

from innerpissa.adapter import attach, remove, steer, trainable_parameters
from innerpissa.adapter.export import lora_factors, save_peft_lora
from innerpissa.config import AdapterConfig
from innerpissa.steerers.innerpissa import InnerPiSSASteerer
from innerpissa.testing import save_tiny_model, tiny_model

IDS = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))


def _trained_like(arch: str = "qwen2", **kw):
    """A tiny model with an attached adapter whose parameters are far from their init (as after training)."""
    model, tok = tiny_model(arch)
    attach(model, AdapterConfig(**{"r": 16, "layer_range": (0.3, 1.0), "rotate_u": True, **kw}))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in trainable_parameters(model):
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return model, tok


def _peft_logits(path, arch: str = "qwen2") -> torch.Tensor:
    base, _ = tiny_model(arch)
    with torch.no_grad():
        return PeftModel.from_pretrained(base, str(path))(IDS).logits


@pytest.mark.parametrize("scale", ["mult", "add", "tanh", "none"])
def test_exported_lora_reproduces_steered_logits(scale, tmp_path):
    model, _ = _trained_like(scale=scale)
    for c in (0.8, -1.5):
        with steer(model, c), torch.no_grad():
            ours = model(IDS).logits
        save_peft_lora(model, c, tmp_path / str(c))
        theirs = _peft_logits(tmp_path / str(c))
        assert (theirs - ours).abs().max() <= 1e-4
        with torch.no_grad():
            assert (theirs - model(IDS).logits).abs().max() > 1e-2  # the adapter does something at this c


def test_export_config_targets_rank_pattern_and_factors(tmp_path):
    # q_proj keeps 48 directions, k_proj only 32 (its [32, 64] weight): peft needs a rank_pattern for it.
    model, _ = _trained_like("llama", r=48, target_modules=("q_proj", "k_proj"), layers=(1, 3))
    save_peft_lora(model, 0.5, tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == cfg["lora_alpha"] == 48
    assert sorted(cfg["target_modules"]) == ["k_proj", "q_proj"] and cfg["layers_to_transform"] == [1, 3]
    assert set(cfg["rank_pattern"].values()) == {32} and cfg["alpha_pattern"] == cfg["rank_pattern"]
    with steer(model, 0.5), torch.no_grad():
        ours = model(IDS).logits
    assert (_peft_logits(tmp_path, "llama") - ours).abs().max() <= 1e-4
    layer = model.get_submodule("model.layers.1.self_attn.q_proj")
    A, B = lora_factors(layer, 0.5)
    x = torch.randn(5, 64)
    with steer(model, 0.5), torch.no_grad():  # B·A x is exactly what the layer adds to the base output
        assert torch.allclose(layer(x) - layer.base_layer(x), x @ A.T @ B.T, atol=1e-5)


def test_export_refuses_non_finite_and_bare_model(tmp_path):
    model, _ = _trained_like()
    with pytest.raises(ValueError, match="finite"):
        save_peft_lora(model, float("nan"), tmp_path / "x")
    bare, _ = tiny_model("qwen2")
    with pytest.raises(ValueError, match="no InnerPiSSA layers"):
        save_peft_lora(bare, 1.0, tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A base model directory and an InnerPiSSA steerer directory for it (parameters set, not trained)."""
    root = tmp_path_factory.mktemp("export")
    model, tok = save_tiny_model(root / "model", "qwen2")
    model, _ = _trained_like()
    s = InnerPiSSASteerer(adapter={"r": 16, "layer_range": (0.3, 1.0), "rotate_u": True}, model=str(root / "model"))
    s.model = model
    s.save(root / "adapter")
    return root, model


def test_cli_export_two_coefficients(run_cli, saved):
    root, model = saved
    out = root / "lora"
    code, stdout, err = run_cli("export", "--adapter", str(root / "adapter"), "--coeff", "0.8", "--coeff", "-0.8",
                                "--format", "peft-lora", "--out", str(out))
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["c+0.8", "c-0.8"]
    for c in (0.8, -0.8):
        assert sorted(p.name for p in (out / f"c{c:+g}").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
        with steer(model, c), torch.no_grad():
            assert (_peft_logits(out / f"c{c:+g}") - model(IDS).logits).abs().max() <= 1e-4


@pytest.mark.parametrize("extra, message", [
    (["--coeff", "1", "--format", "gguf"], "unknown export format 'gguf'"),
    (["--coeff", "nan"], "must be finite"),
    (["--coeff", "1", "--coeff", "1"], "--coeff has duplicates"),
])
def test_cli_export_bad_input(run_cli, saved, extra, message):
    root, _ = saved
    out = root / "bad"
    code, _, err = run_cli("export", "--adapter", str(root / "adapter"), "--out", str(out), *extra)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not any(p.name.startswith(".bad.") for p in root.iterdir())


@pytest.mark.slow
def test_smollm2_export_round_trip(tmp_path):
    from transformers import AutoModelForCausalLM

    from innerpissa.models import ensure_smollm2, load_model

    model, tok = load_model("smollm2-135m")
    texts = ["The capital of France is", "Pretend you're an honest person. Did you eat the last cookie? Well, I"]
    batch = tok(texts, return_tensors="pt", padding=True)  # two lengths: padding and a longer sequence
    real = batch.attention_mask.bool()
    attach(model, AdapterConfig(r=16, layers=(18, 20), rotate_u=True))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in trainable_parameters(model):
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
        with steer(model, 0.8):
            ours = model(**batch).logits
        bare = model(**batch).logits
    save_peft_lora(model, 0.8, tmp_path)
    del model
    base = AutoModelForCausalLM.from_pretrained(ensure_smollm2())  # the README's base: a plain transformers load
    with torch.no_grad():
        theirs = PeftModel.from_pretrained(base, str(tmp_path))(**batch).logits
    err = (theirs - ours)[real].abs().max()
    assert err <= 1e-4, err
    assert (theirs - bare)[real].abs().max() > 1e-2
