"""Precision: `auto` resolution from CPU flags, legacy configs, c = 0 exactness in fp32 and bf16, bf16 within a
stated tolerance of fp32, fp32 losses/grads/optimizer state under bf16, and the resolved precision on record."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

from innerpissa import adapter as A
from innerpissa import precision as P
from innerpissa.concepts import load_concept, make_pairs
from innerpissa.config import AdapterConfig, LossConfig, TrainConfig
from innerpissa.eval.datasets import limit_rows, load_dataset
from innerpissa.eval.score import score
from innerpissa.experiments.evaluate import evaluate_run
from innerpissa.objectives.reprpo import suffix_span
from innerpissa.steerers.innerpissa import InnerPiSSASteerer
from innerpissa.testing import tiny_model
from innerpissa.train import Trainer

BF16_LOGP_TOL = 0.05  # nats: max |log p_bf16 − log p_fp32| per token on the tiny model (measured 0.02)


@pytest.fixture
def model():
    m, tok = tiny_model("llama")
    return m, tok


def _ids() -> torch.Tensor:
    return torch.randint(3, 1000, (3, 20), generator=torch.Generator().manual_seed(0))


def test_cpu_record_reads_model_and_bf16_flags_from_cpuinfo(monkeypatch, tmp_path) -> None:
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8488C\n"
                    "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16\n\nprocessor\t: 1\n")
    real_path = P.Path
    monkeypatch.setattr(P, "Path", lambda p: fake if p == "/proc/cpuinfo" else real_path(p))
    P._cpuinfo.cache_clear()
    try:
        assert P.cpu_record() == {"model": "Intel(R) Xeon(R) Platinum 8488C", "bf16_flags": ["amx_bf16", "avx512_bf16"]}
        fake.write_text("Features\t: fp asimd\n")  # an ARM core without bf16 and without a model line
        P._cpuinfo.cache_clear()
        assert P.cpu_record() == {"model": None, "bf16_flags": []}
    finally:
        P._cpuinfo.cache_clear()


def test_auto_follows_cpu_flags_and_env(monkeypatch) -> None:
    monkeypatch.delenv(P.ENV, raising=False)
    monkeypatch.setattr(P, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_bf16"}))
    assert P.resolve("auto", "cpu") == "bf16"
    monkeypatch.setattr(P, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))  # AVX512 alone is only emulation
    assert P.resolve("auto", "cpu") == "fp32"
    assert P.resolve("bf16", "cpu") == "bf16" and P.resolve("fp32", "cpu") == "fp32"
    assert P.cpu_has_bf16(frozenset({"amx_bf16"})) and P.cpu_has_bf16(frozenset({"fp", "asimd", "bf16"}))
    monkeypatch.setenv(P.ENV, "bf16")
    assert P.resolve("auto", "cpu") == "bf16" and P.resolve("fp32", "cpu") == "fp32"  # explicit beats the env
    monkeypatch.setenv(P.ENV, "fp16")
    with pytest.raises(ValueError, match="fp32 or bf16"):
        P.resolve("auto", "cpu")
    with pytest.raises(ValueError, match="auto, fp32, bf16"):
        P.check("half")


def test_legacy_bf16_field_loads() -> None:
    assert TrainConfig(bf16=True).precision == "auto" and TrainConfig(bf16=False).precision == "fp32"
    assert TrainConfig(bf16=False, precision="bf16").precision == "bf16"  # an explicit precision wins
    assert "bf16" not in TrainConfig().model_dump()
    with pytest.raises(ValueError):
        TrainConfig(precision="fp16")


def test_c0_exact_in_both_precisions_and_bf16_within_tolerance(model) -> None:
    m, _ = model
    ids = _ids()
    with torch.no_grad():
        f32 = m(input_ids=ids).logits
        with P.autocast("bf16", "cpu"):
            b16 = m(input_ids=ids).logits
        A.attach(m, AdapterConfig(r=8))
        for p in A.trainable_parameters(m):
            p.normal_(0, 0.1)
        with A.steer(m, 0.0):
            assert torch.equal(m(input_ids=ids).logits, f32)
            with P.autocast("bf16", "cpu"):
                assert torch.equal(m(input_ids=ids).logits, b16)
        err = (f32.log_softmax(-1) - b16.float().log_softmax(-1)).abs().max()
        assert 0 < err < BF16_LOGP_TOL
        with A.steer(m, 1.0):
            s32 = m(input_ids=ids).logits
            with P.autocast("bf16", "cpu"):
                s16 = m(input_ids=ids).logits
        # the steering change itself survives bf16: its error is that of the base forward, not of a cancellation
        change = (s32 - f32).abs().max()
        assert change > 5 * BF16_LOGP_TOL
        assert ((s16.float() - b16.float()) - (s32 - f32)).abs().max() < BF16_LOGP_TOL


def test_core_cache_invalidated_by_inplace_updates(model) -> None:
    m, _ = model
    ids = _ids()
    A.attach(m, AdapterConfig(r=8))
    layer = next(iter(A.adapter_layers(m).values()))
    with torch.no_grad():
        for p in A.trainable_parameters(m):
            p.normal_(0, 0.1)
        with A.steer(m, -1.0):
            neg = m(input_ids=ids).logits
        with A.steer(m, 1.0):
            first = m(input_ids=ids).logits
            assert layer._core_cache is not None and layer._core_cache[0][0] == 1.0
            for p in A.trainable_parameters(m):
                p.neg_()  # in place, as the trainer's flip (an optimizer step or a load also works in place)
            flipped = m(input_ids=ids).logits
        assert torch.allclose(flipped, neg, atol=1e-5)  # negated parameters at +1 == the old ones at −1
        assert not torch.allclose(first, flipped, atol=1e-3)
    with A.steer(m, 1.0):  # with gradients: never cached, the graph reaches the parameters
        m(input_ids=ids).logits.sum().backward()
    assert layer.P_v.grad is not None and layer.P_v.grad.abs().sum() > 0


def test_bf16_training_keeps_losses_grads_and_state_fp32(model) -> None:
    m, tok = model
    tr_pairs, va_pairs = make_pairs(load_concept("honesty"), seed=0)
    tr = Trainer(m, tok, tr_pairs.subset(list(range(8))), va_pairs.subset(list(range(4))), AdapterConfig(r=8),
                 LossConfig(), TrainConfig(steps=2, batch_size=4, n_val=4, precision="bf16"), progress=False)
    tr.prepare()
    o = tr.objective
    assert o.precision == "bf16" and o.cache[0].chosen.hs.dtype == torch.float32  # reference states in the fp32 basis
    idx = o.batches[0]
    b = o.encode(o.train_pairs, idx)
    ref = o._ref_for(idx, o.cache, o.train_pairs, suffix_span(b))
    total, _ = o.step_loss(b, ref, o.u)
    assert total.dtype == torch.float32
    tr.optimizer_step(0)
    params = o.adapter.parameters()
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in params)
    assert all(v.dtype == torch.float32 for st in tr.loop.opt.state.values() for k, v in st.items() if k != "step")


def test_resolved_precision_recorded(model, tmp_path) -> None:
    m, tok = model
    tr_pairs, va_pairs = make_pairs(load_concept("honesty"), seed=0)
    st = InnerPiSSASteerer(adapter={"r": 8}, train={"steps": 1, "batch_size": 4, "n_val": 4, "precision": "bf16"})
    st.fit(m, tok, tr_pairs.subset(list(range(4))), va_pairs.subset(list(range(4))), progress=False)
    st.save(tmp_path / "fit")
    assert json.loads((tmp_path / "fit" / "adapter_config.json").read_text())["train"]["precision"] == "bf16"
    es = limit_rows(load_dataset("dd-honesty"), 4, seed=0)
    evaluate_run(m, tok, st, [es], [-1.0, 0.0, 1.0], tmp_path / "run", n_boot=20, progress=False, precision="auto")
    rec = json.loads((tmp_path / "run" / "config.json").read_text())["precision"]
    assert rec == {"requested": "auto", "resolved": "fp32"}  # the suite pins auto to fp32 (conftest)


def test_bf16_scores_close_to_fp32(model) -> None:
    m, tok = model
    es = limit_rows(load_dataset("dd-honesty"), 6, seed=1)
    from _eval_steerers import Identity

    t32 = score(m, tok, Identity(), es, [0.0], pmass_min=0.0, progress=False, precision="fp32")
    t16 = score(m, tok, Identity(), es, [0.0], pmass_min=0.0, progress=False, precision="bf16")
    assert (t32["logratio"] - t16["logratio"]).abs().max() < 2 * BF16_LOGP_TOL
    assert (t32["nll"] - t16["nll"]).abs().max() < BF16_LOGP_TOL
    assert not t32["logratio"].equals(t16["logratio"])  # bf16 really ran


@pytest.mark.parametrize("cmd", [["train", "--steps", "1"], ["eval", "--adapter", "nowhere"],
                                 ["generate", "--adapter", "nowhere", "--prompt", "hi"], ["compare", "--quick"]])
def test_cli_rejects_unknown_precision(run_cli, tmp_path, cmd) -> None:
    code, out, err = run_cli(*cmd, "--precision", "fp16", *(["--out", str(tmp_path / "o")] if cmd[0] in ("train", "compare") else []))
    assert code == 2 and err.startswith("error:") and "precision" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_cpu_bf16_autocast_runs_attention_in_fp32_and_restores_it(model, monkeypatch) -> None:
    """Under bf16 on CPU the matmuls are bf16 but SDPA sees fp32 q/k/v (its bf16 CPU backward is slow); the
    override is gone on exit, and in fp32 it changes nothing."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    m, tok = model
    seen: list[tuple[torch.dtype, bool]] = []  # (q dtype, autocast on): autocast would cast q/k/v to bf16
    real = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda q, *a, **kw: (seen.append((q.dtype, torch.is_autocast_enabled("cpu"))), real(q, *a, **kw))[1])
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    before = ALL_ATTENTION_FUNCTIONS["sdpa"]
    with torch.no_grad():
        ref = m(input_ids=ids).logits
        seen.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            m(input_ids=ids)
        plain = set(seen)
        seen.clear()
        with P.autocast("bf16", "cpu"):
            m(input_ids=ids)
        inside = set(seen)
        with P.fp32_attention():
            same = m(input_ids=ids).logits
    assert plain == {(torch.float32, True)} and inside == {(torch.float32, False)}
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is before
    torch.testing.assert_close(same, ref, rtol=0, atol=0)


def test_bf16_fit_casts_frozen_linears_once_same_result_and_restores_them(model, monkeypatch) -> None:
    """The bf16 weight copies a fit makes once (`precision.bf16_frozen_linears`) give bit-for-bit the adapter plain
    autocast gives, and the model's weights (tied lm_head included) come back as the same fp32 tensors."""
    from innerpissa.objectives import reprpo as T
    from innerpissa.experiments.evaluate import model_state_sha256

    m, tok = model
    tr_pairs, va_pairs = make_pairs(load_concept("honesty"), seed=0)
    before = model_state_sha256(m)
    tied = m.get_output_embeddings().weight is m.get_input_embeddings().weight
    swaps: list[int] = []
    real = T.bf16_frozen_linears

    def spy(mod):
        with real(mod) as n:
            swaps.append(n)
            assert m.get_output_embeddings().weight.dtype == torch.bfloat16
            yield n

    def fit(ctx) -> list[torch.Tensor]:
        monkeypatch.setattr(T, "bf16_frozen_linears", ctx)
        tr = Trainer(m, tok, tr_pairs.subset(list(range(8))), va_pairs.subset(list(range(4))), AdapterConfig(r=8),
                     LossConfig(), TrainConfig(steps=2, batch_size=4, n_val=4, precision="bf16"), progress=False)
        tr.run()
        out = [p.detach().clone() for p in tr.objective.adapter.parameters()]
        A.remove(m)
        return out

    plain = fit(lambda mod: contextlib.nullcontext(0))
    cast_once = fit(contextlib.contextmanager(spy))
    assert swaps and swaps[0] > 0  # the copies were made (and lm_head was one of them)
    assert plain and all(torch.equal(a, b) for a, b in zip(plain, cast_once, strict=True))
    assert model_state_sha256(m) == before
    assert all(p.dtype == torch.float32 for p in m.parameters())
    assert (m.get_output_embeddings().weight is m.get_input_embeddings().weight) == tied
