"""Export to a llama.cpp GGUF LoRA adapter: read back with gguf.GGUFReader, B·A is our ΔW(c) under llama.cpp's names."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from gguf import GGUFReader
from transformers import AutoModelForCausalLM, OlmoConfig
from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

from innerpissa.adapter import adapter_layers, attach, merge, trainable_parameters
from innerpissa.adapter import gguf_export
from innerpissa.adapter.gguf_export import gguf_lora, save_gguf_lora
from innerpissa.config import AdapterConfig
from innerpissa.steerers.innerpissa import InnerPiSSASteerer
from innerpissa.testing import save_tiny_model, tiny_model, tiny_tokenizer

ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
KIND = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
        "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}


def _trained_like(model, **kw):
    """Attach an adapter and move its parameters far from their init (as after training)."""
    attach(model, AdapterConfig(**{"r": 16, "layer_range": (0.3, 1.0), "rotate_u": True, **kw}))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in trainable_parameters(model):
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return model


def _read(path) -> tuple[dict, dict[str, np.ndarray], dict[str, list[int]]]:
    r = GGUFReader(str(path))
    meta = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    return meta, {t.name: np.array(t.data) for t in r.tensors}, {t.name: [int(x) for x in t.shape] for t in r.tensors}


def _delta(model, c: float) -> dict[str, torch.Tensor]:
    """ΔW(c) per adapted module, independently of the factors: merged weight at c minus the base weight."""
    merged = merge(copy.deepcopy(model), c)
    return {n: merged.get_submodule(n).weight - model.get_submodule(n).base_layer.weight
            for n, _ in model.named_modules() if n.endswith(ALL) and hasattr(model.get_submodule(n), "base_layer")}


def _unpermuted(arch: str, name: str, W: np.ndarray, config) -> np.ndarray:
    """llama.cpp's attn_q/attn_k rows back in HF order (transformers' own GGUF loader does this for llama)."""
    if arch != "llama" or not (".attn_q." in name or ".attn_k." in name):
        return W
    return LlamaTensorProcessor(config=config.to_dict()).process(W, name).weights


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gguf_names_shapes_metadata_and_delta(arch, tmp_path):
    # r=48 > the 32 rows of k/v_proj: those keep 32 directions and are zero-padded to the file's rank 48.
    model, _ = tiny_model(arch)
    _trained_like(model, r=48, target_modules=ALL, layers=(1, 3))
    c = 0.8
    save_gguf_lora(model, c, tmp_path / "a.gguf")
    meta, tensors, shapes = _read(tmp_path / "a.gguf")
    assert meta["general.architecture"] == arch and meta["general.type"] == "adapter"
    assert meta["adapter.type"] == "lora" and meta["adapter.lora.alpha"] == 48.0
    assert meta["general.file_type"] == 0 and meta["innerpissa.tensor_type"] == "f32"
    assert meta["innerpissa.coeff"] == pytest.approx(c) and meta["innerpissa.base_model"] == f"tiny-{arch}-0"
    expected = {f"blk.{i}.{KIND[m]}.weight.lora_{ab}" for i in (1, 3) for m in ALL for ab in "ab"}
    assert set(tensors) == expected  # layers 0 and 2, embeddings and the tied lm_head are left out
    deltas = _delta(model, c)
    for i in (1, 3):
        for m in ALL:
            hf = f"model.layers.{i}.{'self_attn' if m in ALL[:4] else 'mlp'}.{m}"
            name = f"blk.{i}.{KIND[m]}.weight"
            out, inp = model.get_submodule(hf).base_layer.weight.shape
            a, b = tensors[name + ".lora_a"], tensors[name + ".lora_b"]
            assert a.dtype == b.dtype == np.float32
            # GGUF ne order (llama.cpp checks: a.ne[0] = W.ne[0] = in, b.ne[1] = W.ne[1] = out, a.ne[1] = b.ne[0])
            assert shapes[name + ".lora_a"] == [inp, 48] and shapes[name + ".lora_b"] == [48, out]
            # llama.cpp scales B·A by alpha / b.ne[0] = 1
            BA = _unpermuted(arch, name, b @ a, model.config)
            ref = deltas[hf].numpy()
            assert np.abs(ref).max() > 1e-2  # the adapter changes this weight
            assert np.allclose(BA, ref, atol=2e-5 * np.abs(ref).max()), (name, np.abs(BA - ref).max())


def test_llama_q_k_rows_are_permuted_like_llama_cpp(tmp_path):
    model, _ = tiny_model("llama")
    _trained_like(model, target_modules=("q_proj", "k_proj"), layers=(2,))
    save_gguf_lora(model, 1.0, tmp_path / "a.gguf")
    _, tensors, _ = _read(tmp_path / "a.gguf")
    deltas = _delta(model, 1.0)
    for kind, m in (("attn_q", "q_proj"), ("attn_k", "k_proj")):
        BA = tensors[f"blk.2.{kind}.weight.lora_b"] @ tensors[f"blk.2.{kind}.weight.lora_a"]
        ref = deltas[f"model.layers.2.self_attn.{m}"].numpy()
        assert not np.allclose(BA, ref, atol=1e-3)  # rows are in llama.cpp's rope order, not HF's
        assert sorted(map(tuple, BA.round(4))) == sorted(map(tuple, ref.round(4)))  # a pure row permutation


def test_f16_keeps_the_change_within_f16_rounding(tmp_path):
    model, _ = tiny_model("qwen2")
    _trained_like(model)
    for c in (1.0, -1.0):
        save_gguf_lora(model, c, tmp_path / "f32.gguf")
        save_gguf_lora(model, c, tmp_path / "f16.gguf", dtype="f16")
        meta, t16, _ = _read(tmp_path / "f16.gguf")
        _, t32, _ = _read(tmp_path / "f32.gguf")
        assert meta["general.file_type"] == 1 and meta["innerpissa.tensor_type"] == "f16"
        assert set(t16) == set(t32) and all(t.dtype == np.float16 for t in t16.values())
        for name in {n.removesuffix(".lora_a") for n in t32 if n.endswith(".lora_a")}:
            BA32 = t32[name + ".lora_b"] @ t32[name + ".lora_a"]
            BA16 = t16[name + ".lora_b"].astype(np.float32) @ t16[name + ".lora_a"].astype(np.float32)
            rel = np.linalg.norm(BA16 - BA32) / np.linalg.norm(BA32)
            assert 0 < rel < 2e-3, (name, rel)  # f16's unit roundoff is 4.9e-4


def test_gguf_refuses_bad_input(tmp_path):
    model, _ = tiny_model("llama")
    _trained_like(model)
    for c in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite"):
            save_gguf_lora(model, c, tmp_path / "x.gguf")
    with pytest.raises(ValueError, match="unknown gguf tensor type"):
        save_gguf_lora(model, 1.0, tmp_path / "x.gguf", dtype="q8_0")
    bare, _ = tiny_model("llama")
    with pytest.raises(ValueError, match="no InnerPiSSA layers"):
        save_gguf_lora(bare, 1.0, tmp_path / "x.gguf")
    # An architecture whose llama.cpp names we do not know.
    olmo = AutoModelForCausalLM.from_config(OlmoConfig(
        vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2))
    _trained_like(olmo)
    with pytest.raises(ValueError, match="no llama.cpp tensor-name mapping for model type 'olmo'"):
        save_gguf_lora(olmo, 1.0, tmp_path / "x.gguf")
    # A module kind llama.cpp has no LoRA slot for (an extra linear in each block).
    odd, _ = tiny_model("llama")
    for layer in odd.model.layers:
        layer.self_attn.extra_proj = torch.nn.Linear(64, 64, bias=False)
    _trained_like(odd, target_modules=("q_proj", "extra_proj"))
    with pytest.raises(ValueError, match=r"llama.cpp cannot adapt model.layers.1.self_attn.extra_proj \(llama has no tensor of its kind\)"):
        save_gguf_lora(odd, 1.0, tmp_path / "x.gguf")
    # Values f16 cannot hold (S·exp(λc) with a huge λ) are refused in f16 and kept in f32.
    big, _ = tiny_model("llama")
    _trained_like(big, scale="mult")
    with torch.no_grad():
        for layer in adapter_layers(big).values():
            layer.lam.fill_(14.0)
    with pytest.raises(ValueError, match="overflows f16; export as f32"):
        save_gguf_lora(big, 1.0, tmp_path / "x.gguf", dtype="f16")
    assert not list(tmp_path.iterdir())  # nothing written, no temp file left
    save_gguf_lora(big, 1.0, tmp_path / "x.gguf")
    assert (tmp_path / "x.gguf").is_file()


def _one_error(code: int, err: str, message: str) -> None:
    """Exit 2 and one `error: ...` line naming the problem (model-loading progress bars may precede it)."""
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1 and errors[0].startswith("error: ") and message in errors[0], err


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny qwen2 base model dir + an InnerPiSSA steerer dir for it; the same for an olmo (no llama.cpp mapping)."""
    root = tmp_path_factory.mktemp("gguf")
    save_tiny_model(root / "model", "qwen2")
    model, _ = tiny_model("qwen2")
    _trained_like(model)
    s = InnerPiSSASteerer(adapter={"r": 16, "layer_range": (0.3, 1.0), "rotate_u": True}, model=str(root / "model"))
    s.model = model
    s.save(root / "adapter")
    olmo = AutoModelForCausalLM.from_config(OlmoConfig(
        vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2))
    olmo.save_pretrained(root / "olmo")
    tiny_tokenizer().save_pretrained(root / "olmo")
    _trained_like(olmo)
    s = InnerPiSSASteerer(adapter={"r": 16, "layer_range": (0.3, 1.0), "rotate_u": True}, model=str(root / "olmo"))
    s.model = olmo
    s.save(root / "olmo-adapter")
    return root, model


def test_cli_gguf_one_and_two_coefficients(run_cli, saved):
    root, model = saved
    code, stdout, err = run_cli("export", "--adapter", str(root / "adapter"), "--coeff", "0.8", "--format",
                                "gguf-lora", "--out", str(root / "steer.gguf"))
    assert code == 0, err
    assert "exported GGUF LoRA adapter(s) (f32) at c=0.8" in stdout
    meta, one, _ = _read(root / "steer.gguf")
    assert meta["general.architecture"] == "qwen2" and meta["innerpissa.coeff"] == pytest.approx(0.8)
    out = root / "two"
    code, stdout, err = run_cli("export", "--adapter", str(root / "adapter"), "--coeff", "0.8", "--coeff", "-0.8",
                                "--format", "gguf-lora", "--dtype", "f16", "--out", str(out))
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["c+0.8.gguf", "c-0.8.gguf"] and "c-0.8.gguf)" in stdout
    deltas = {c: _delta(model, c) for c in (0.8, -0.8)}
    for c in (0.8, -0.8):
        meta, t, _ = _read(out / f"c{c:+g}.gguf")
        assert meta["general.file_type"] == 1 and meta["innerpissa.coeff"] == pytest.approx(c)
        assert len(t) == 2 * len(deltas[c])
        for hf, ref in deltas[c].items():
            i, m = hf.split(".")[2], hf.split(".")[-1]
            name = f"blk.{i}.{KIND[m]}.weight"
            BA = t[name + ".lora_b"].astype(np.float32) @ t[name + ".lora_a"].astype(np.float32)
            assert np.linalg.norm(BA - ref.numpy()) / np.linalg.norm(ref.numpy()) < 2e-3
    # --overwrite replaces an existing OUT
    code, _, err = run_cli("export", "--adapter", str(root / "adapter"), "--coeff", "-0.5", "--format", "gguf-lora",
                           "--out", str(root / "steer.gguf"), "--overwrite")
    assert code == 0, err
    assert _read(root / "steer.gguf")[0]["innerpissa.coeff"] == pytest.approx(-0.5)


@pytest.mark.parametrize("adapter, extra, message", [
    ("adapter", ["--coeff", "nan"], "must be finite"),
    ("adapter", ["--coeff", "inf", "--coeff", "1"], "must be finite"),
    ("adapter", ["--coeff", "1", "--coeff", "1e39"], "gives a non-finite weight change"),
    ("adapter", ["--coeff", "1", "--dtype", "q8_0"], "--dtype q8_0: use f32 or f16"),
    ("olmo-adapter", ["--coeff", "1"], "no llama.cpp tensor-name mapping for model type 'olmo'"),
    ("olmo-adapter", ["--coeff", "1", "--coeff", "-1"], "no llama.cpp tensor-name mapping for model type 'olmo'"),
    ("adapter", ["--coeff", "1", "--coeff", "-1", "KINDS"], "(qwen2 has no LoRA slot on blk.1.attn_output.weight)"),
])
def test_cli_gguf_bad_input(run_cli, saved, monkeypatch, adapter, extra, message):
    root, _ = saved
    if "KINDS" in extra:  # as if llama.cpp had no LoRA slot on attention output (a module kind it cannot adapt)
        extra = extra[:-1]
        monkeypatch.setattr(gguf_export, "LORA_KINDS", tuple(k for k in gguf_export.LORA_KINDS if k != "ATTN_OUT"))
    out = root / "bad" / "x.gguf"
    code, _, err = run_cli("export", "--adapter", str(root / adapter), "--format", "gguf-lora", "--out", str(out), *extra)
    _one_error(code, err, message)
    assert not (root / "bad").exists()


def test_cli_gguf_refuses_existing_out(run_cli, saved):
    root, _ = saved
    (root / "exists.gguf").write_text("keep")
    (root / "exists-dir").mkdir(exist_ok=True)
    for out, coeffs, message in [
        ("exists.gguf", ["1"], "already exists; pass --overwrite"),
        ("exists-dir", ["1", "-1"], "already exists; pass --overwrite"),
        ("exists-dir", ["1"], "is a directory; one --coeff writes a .gguf file"),
        ("exists.gguf", ["1", "-1"], "is a file; one --coeff writes a .gguf file, several write a directory"),
    ]:
        args = [a for c in coeffs for a in ("--coeff", c)]
        code, _, err = run_cli("export", "--adapter", str(root / "adapter"), "--format", "gguf-lora",
                               "--out", str(root / out), *args)
        _one_error(code, err, message)
    assert (root / "exists.gguf").read_text() == "keep" and not list((root / "exists-dir").iterdir())
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temp files


def test_cli_peft_refuses_f16(run_cli, saved):
    root, _ = saved
    code, _, err = run_cli("export", "--adapter", str(root / "adapter"), "--coeff", "1", "--dtype", "f16",
                           "--out", str(root / "peft"))
    _one_error(code, err, "only with --format gguf-lora")
    assert not (root / "peft").exists()


@pytest.mark.slow
def test_llama_cpp_applies_the_export_like_our_steering():
    """llama.cpp itself (llama-cpp-python, `pip install -e .[gguf]`) on SmolLM2's Q4_1 base GGUF + our GGUF LoRA:
    its next-token logit shift matches our steered − base shift, exactly on the base dequantized to f32
    (bench/gguf_export.py with a random-parameter adapter on all seven projections and 8 prompts; the committed
    numbers use a trained adapter and 16)."""
    pytest.importorskip("llama_cpp")
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "bench" / "gguf_export.py"
    spec = importlib.util.spec_from_file_location("bench_gguf_export", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.run(random_params=0.01, n_pairs=4, coeffs=(1.0,), targets=ALL)  # q/k: llama.cpp's row order
    assert len(res["rows"]) == 4
    for row in res["rows"]:
        assert row["kl_base_vs_ours"] > 0.01, row  # the adapter changes the next-token distribution
        if row["export"] == "peft-lora" or "f32 GGUF" in row["runtime"]:  # exact up to float rounding
            assert row["shift_rel_err"] < 1e-2 and row["kl_ratio"] < 1e-3, row
        else:  # llama.cpp's 4-bit matmuls on the Q4_1 base add their own noise (cosine 0.974 for this adapter,
            # whose shift is half the trained one's; 0.99 for the trained adapter in bench/results/gguf_export.json)
            assert row["shift_cosine"] >= 0.95 and row["kl_ratio"] <= 0.05, row
