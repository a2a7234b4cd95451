"""End to end: `evaluate_run` on a tiny model writes a complete run dir; the `eval` CLI and its errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from _eval_steerers import AddVector, Identity
from innerpissa.concepts import ContrastPairs, load_concept, make_pairs
from innerpissa.eval.datasets import from_generic, limit_rows, load_dataset
from innerpissa.eval.score import score
from innerpissa.experiments.evaluate import evaluate_run
from innerpissa.steerers import get_steerer
from innerpissa.testing import save_tiny_model, tiny_model

SUMMARY_KEYS = {
    "target_dim", "effect", "ci_low", "ci_high", "t", "p", "n_rows", "n_dilemmas", "spearman", "dnll", "pmass_drop",
    "gain", "coherent_range", "side_effect_mean_abs", "side_effect_n_sig", "yesbias_effect", "yesbias_p", "raw_shift",
    "flips_forward_fixed", "flips_forward_broken", "flips_reverse_flipped", "flips_reverse_counter", "n_nan",
    "n_train_overlap",
}


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def train_pairs() -> ContrastPairs:
    return make_pairs(load_concept("honesty"))[0]


def test_evaluate_run_writes_complete_run_dir(tmp_path, tiny, train_pairs) -> None:
    model, tok = tiny
    v = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    dd = limit_rows(load_dataset("dd-honesty"), 12, seed=0)
    tqa = limit_rows(load_dataset("truthfulqa"), 6, seed=0)
    out = tmp_path / "run"
    summary = evaluate_run(model, tok, AddVector(v), [dd, tqa], [-1, 0, 1], out, seed=0, train_pairs=train_pairs,
                           n_boot=50, pmass_min=0.0, progress=False)
    assert {p.name for p in out.iterdir()} == {"config.json", "scores.parquet", "effects.parquet", "summary.json", "dose_response.png"}
    assert json.loads((out / "summary.json").read_text()) == summary
    assert set(summary) == {"dd-honesty", "truthfulqa"}
    for name, s in summary.items():
        assert SUMMARY_KEYS <= set(s) and s["n_train_overlap"] == 0
    assert summary["dd-honesty"]["target_dim"] == "Value/honesty" and summary["dd-honesty"]["n_questions"] == 12
    scores = pd.read_parquet(out / "scores.parquet")
    assert len(scores) == 3 * (12 + 6) and set(scores["dataset"]) == {"dd-honesty", "truthfulqa"}
    base = score(model, tok, Identity(), dd, [0.0], pmass_min=0.0, progress=False)
    at0 = scores[(scores["dataset"] == "dd-honesty") & (scores["coeff"] == 0.0)]
    np.testing.assert_array_equal(at0["logratio"].to_numpy(), base["logratio"].to_numpy())
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["coeffs"] == [-1.0, 0.0, 1.0] and cfg["steerer"] == {"method": "add", "params": {"layer": 1}}
    assert cfg["datasets"]["dd-honesty"]["hash"] == dd.content_hash() and cfg["overlap"]["checked"]
    assert len(cfg["model_state_sha256"]) == 16 and cfg["code"]["version"] and cfg["versions"]["torch"]
    assert (out / "dose_response.png").read_bytes()[:4] == b"\x89PNG"


def test_overlap_check_finds_leaked_prompt(tmp_path, tiny, train_pairs) -> None:
    model, tok = tiny
    long = next(s for s in train_pairs.suffixes if len(s.split()) >= 10)
    short = next(s for s in train_pairs.suffixes if len(s.split()) <= 2)
    es = from_generic(pd.DataFrame({
        "prompt": [f"Is this true? {long.upper()}!", "Is the sky blue?", short, f"{short} and more words here"],
        "label:x": [1, -1, 1, -1]}), "leaky")
    summary = evaluate_run(model, tok, Identity(), [es], [0, 1], tmp_path / "o", train_pairs=train_pairs,
                           n_boot=20, pmass_min=0.0, progress=False)
    assert summary["leaky"]["n_train_overlap"] == 2  # the 8-gram run (case/punctuation-blind) and the exact short text
    no_pairs = evaluate_run(model, tok, Identity(), [es], [0, 1], tmp_path / "o2", n_boot=20, pmass_min=0.0, progress=False)
    assert no_pairs["leaky"]["n_train_overlap"] is None


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny):
    """A tiny base model on disk, a mean_diff steerer fitted on it, and a smaller model it does not fit."""
    root = tmp_path_factory.mktemp("cli")
    model, tok = tiny
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    other, other_tok = save_tiny_model(root / "other", "llama", hidden=32)
    steerer = get_steerer("mean_diff", layers=[1])
    steerer.fit(model, tok, make_pairs(load_concept("honesty"))[0].subset(list(range(8))))
    steerer.save(root / "adapter")
    return root


def _cli(run_cli, *args: str) -> tuple[int, str, str]:
    return run_cli("eval", *args)


def test_cli_eval_end_to_end(run_cli, saved) -> None:
    out = saved / "eval"
    code, stdout, err = _cli(run_cli, "--adapter", str(saved / "adapter"), "--model", str(saved / "model"),
                             "--dataset", "dd-honesty", "--coeffs", "-2", "-1", "0", "1", "2", "--limit", "6",
                             "--concept", "honesty", "--n-boot", "20", "--out", str(out))
    assert code == 0, err
    assert "Value/honesty (target)" in stdout and "Gain" in stdout and "wrote" in stdout
    assert "flips −1 flip/counter" in stdout and "…" not in stdout  # piped: the headline table is not cut at 80
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dd-honesty"]["n_questions"] == 6 and summary["dd-honesty"]["n_train_overlap"] == 0
    assert sorted(pd.read_parquet(out / "scores.parquet")["coeff"].unique()) == [-2.0, -1.0, 0.0, 1.0, 2.0]


@pytest.mark.parametrize("args, message", [
    (["--dataset", "dd-honest"], "unknown dataset 'dd-honest'; choose one of dd-honesty, dd-all"),
    (["--coeffs", "1", "oops"], "Invalid value for '--coeffs': Input should be a valid number"),
    (["--dataset", "dd-sample-0"], "cannot sample 0 dilemmas"),
])
def test_cli_input_errors(run_cli, saved, args, message) -> None:
    code, _, err = _cli(run_cli, "--adapter", str(saved / "adapter"), "--model", str(saved / "model"), *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_cli_malformed_file_missing_adapter_and_other_model(run_cli, saved, tmp_path) -> None:
    bad = tmp_path / "mine.csv"
    pd.DataFrame({"prompt": ["a?", "b?", "c?"], "label:x": [1, 5, -1]}).to_csv(bad, index=False)
    code, _, err = _cli(run_cli, "--adapter", str(saved / "adapter"), "--dataset", str(bad))
    assert code == 2 and "bad values in rows 2" in err
    code, _, err = _cli(run_cli, "--adapter", str(tmp_path), "--model", str(saved / "model"))
    assert code == 2 and "no steerer.json" in err
    code, _, err = _cli(run_cli, "--adapter", str(saved / "adapter"))
    assert code == 2 and "records no base model: pass --model" in err
    code, _, err = _cli(run_cli, "--adapter", str(saved / "adapter"), "--model", str(saved / "other"),
                        "--limit", "2", "--out", str(tmp_path / "x"))
    assert code == 2 and "do not fit this model" in err
    assert not (tmp_path / "x").exists()  # nothing half-written
