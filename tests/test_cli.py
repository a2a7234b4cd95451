"""CLI smoke: train -> generate -> merge on a tiny model saved to disk, and one-line errors for bad input."""

from __future__ import annotations

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from innerpissa.models import load_model
from innerpissa.steerers import load_steerer
from innerpissa.testing import save_tiny_model

SMALL = {"adapter": {"r": 8, "layer_range": [0.0, 0.45]}, "loss": {"loss_r": 8, "last_n_tokens": 2},
         "train": {"steps": 2, "batch_size": 2, "n_train": 8, "n_val": 4, "checkpoint_every": 1}}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    for name, seed in (("model", 0), ("other", 1)):
        model, tok = save_tiny_model(root / name, "llama", seed=seed)
    (root / "small.yaml").write_text(yaml.safe_dump(SMALL))
    return root


def test_train_generate_merge(run_cli, saved):
    out = saved / "adapter"
    code, stdout, err = run_cli("train", "--model", str(saved / "model"), "--out", str(out),
                             "--config", str(saved / "small.yaml"))
    assert code == 0, err
    assert (out / "steerer.json").exists() and (out / "adapter.safetensors").exists() and (out / "train_log.csv").exists()
    code, stdout, err = run_cli("generate", "--adapter", str(out), "--prompt", "Tell me a fact.",
                             "--coeffs", "-1", "--coeffs", "0", "--coeffs", "1", "--max-new-tokens", "4")
    assert code == 0, err
    assert "c = -1" in stdout and "c = +1" in stdout
    merged = saved / "merged"
    code, stdout, err = run_cli("merge", "--adapter", str(out), "--coeff", "0.8", "--out", str(merged))
    assert code == 0, err
    plain = AutoModelForCausalLM.from_pretrained(merged)  # loads without innerpissa
    assert not any("InnerPiSSA" in type(m).__name__ for m in plain.modules())
    model, _ = load_model(str(saved / "model"))
    steerer = load_steerer(model, out)
    ids = torch.randint(0, 1000, (1, 8))
    with torch.no_grad(), steerer.steer(model, 0.8):
        steered = model(ids).logits
    with torch.no_grad():
        moved = (steered - model(ids).logits).abs().max()
        assert moved > 0 and (plain(ids).logits - steered).abs().max() < 1e-3 * moved  # the merged model is c = 0.8


@pytest.mark.parametrize("args, message", [
    (["train", "--concept", "nope"], "unknown concept 'nope'"),
    (["train", "--model", "/does/not/exist.gguf"], "GGUF file not found"),
    (["train", "--config", "/does/not/exist.yaml"], "config file not found"),
    (["generate", "--adapter", "/nowhere", "--prompt", "hi"], "not a trained adapter directory"),
])
def test_bad_input_one_line_error(run_cli, args, message, tmp_path):
    if args[0] == "train":  # a fresh --out: the default runs/<concept> may exist in the checkout the tests run in
        args = [*args, "--out", str(tmp_path / "out")]
    code, _, err = run_cli(*args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_bad_config_value_and_wrong_base(run_cli, saved, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"adapter": {"scale": "cubic"}}))
    code, _, err = run_cli("train", "--model", str(saved / "model"), "--config", str(bad),
                        "--out", str(tmp_path / "o"))
    assert code == 2 and "adapter.scale" in err and not (tmp_path / "o").exists()
    code, _, err = run_cli("train", "--model", str(saved / "model"), "--out", str(tmp_path / "a"),
                        "--config", str(saved / "small.yaml"))
    assert code == 0, err
    code, _, err = run_cli("merge", "--adapter", str(tmp_path / "a"), "--coeff", "1",
                        "--model", str(saved / "other"), "--out", str(tmp_path / "m"))
    assert code == 2 and "trained on base model" in err and not (tmp_path / "m").exists()


def test_help_lists_commands_in_workflow_order():
    """`innerpissa --help` lists the commands in the order a user meets them, whichever module registers each."""
    import typer.main

    from innerpissa.cli.app import app

    assert list(typer.main.get_command(app).commands) == [
        "train", "generate", "merge", "export", "sweep", "compare", "report", "eval"]
