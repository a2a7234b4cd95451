"""`innerpissa compare` end to end on the tiny model: 2 methods × 2 seeds, Table 1 files, resume skips fits."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from innerpissa import cli
from innerpissa.experiments import evaluate, run
from innerpissa.experiments.compare import compare_configs
from innerpissa.steerers._addition import AdditionSteerer
from test_sweep import TINY_CONCEPT



def _cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["innerpissa", *args])
    try:
        cli.main()
    except SystemExit as e:
        return int(e.code or 0)
    return 0


@pytest.fixture
def counters(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    counts = {"fit": 0, "eval": 0}
    real_fit = AdditionSteerer.fit  # the fit of pca, mean_diff and random

    def fit(self, *a, **kw):
        counts["fit"] += 1
        return real_fit(self, *a, **kw)

    monkeypatch.setattr(AdditionSteerer, "fit", fit)
    real_eval = evaluate.evaluate_run

    def ev(*a, **kw):
        counts["eval"] += 1
        return real_eval(*a, **kw)

    monkeypatch.setattr(evaluate, "evaluate_run", ev)
    return counts


def test_compare_end_to_end_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, counters, capsys) -> None:
    root, out = tmp_path / "runs", tmp_path / "out"
    concept = tmp_path / "honesty_small.yaml"
    concept.write_text(yaml.safe_dump(TINY_CONCEPT))
    common = ["--model", "tiny-llama", "--concept", str(concept), "--datasets", "dd-honesty", "--eval-limit", "12",
              "--pmass-min", "0", "--root", str(root)]  # the random tiny model puts little mass on Yes/No
    # an unrelated earlier run in the same root must not leak into this comparison's table
    assert _cli(monkeypatch, "compare", "--methods", "mean_diff", "--seeds", "1", *common, "--out", str(tmp_path / "o0")) == 0
    counters.update(fit=0, eval=0)

    assert _cli(monkeypatch, "compare", "--methods", "random,test_shift_free", "--seeds", "2", *common,
                "--out", str(out)) == 2  # unknown method: one-line error, nothing run
    assert counters == {"fit": 0, "eval": 0}

    args = ["compare", "--methods", "random,pca", "--seeds", "2", *common, "--out", str(out), "--overwrite"]
    capsys.readouterr()
    assert _cli(monkeypatch, *args) == 0
    printed, log = capsys.readouterr()
    assert [f"run {i} of 3:" in log for i in (1, 2, 3)] == [True] * 3  # each run announced, also when piped
    table1_lines = printed.split("Table 1 · dd-honesty")[1].split("effect: side-balanced")[0].splitlines()
    assert max(map(len, table1_lines)) <= 120 and "vs random" in printed and "(1 seed, no CI)" not in printed
    from innerpissa.eval.gate import NOT_MEASURED  # the prompting gate has no verdict for this model: said once

    assert " ".join(printed.split()).count(f"warning: tiny-llama / dd-honesty: {NOT_MEASURED}") == 1
    # random is seeded (2 runs, 2 fits); pca is deterministic (1 run, marked "1 seed")
    assert counters == {"fit": 3, "eval": 3}
    for name in ("table1_dd-honesty.md", "table1_dd-honesty.csv", "table1_dd-honesty.tex", "table1_dd-honesty.png",
                 "against_the_grain.md", "against_the_grain.csv", "compare.json"):
        assert (out / name).is_file(), name
    table = pd.read_csv(out / "table1_dd-honesty.csv").set_index("label")
    assert sorted(table.index) == ["pca", "random"]
    assert table.loc["random", "n_seeds"] == 2 and table.loc["pca", "n_seeds"] == 1
    # Table 1's random effect is the mean over its two seeds' run summaries
    info = json.loads((out / "compare.json").read_text())
    effects = [json.loads((root / "runs" / h / "summary.json").read_text())["dd-honesty"]["effect"]
               for h, c in info["runs"].items() if c["method"] == "random"]
    assert len(effects) == 2 and effects[0] != effects[1]
    assert table.loc["random", "effect"] == pytest.approx(np.mean(effects))
    assert "1 seed" in (out / "table1_dd-honesty.md").read_text()
    for h in info["runs"]:  # every run carries its positive control on the held-out pairs
        ctl = json.loads((root / "runs" / h / "control.json").read_text())
        assert ctl["n_suffixes"] >= 2 and -1 <= ctl["score"] <= 1
        assert np.isfinite(ctl["probe_score"]) and ctl["probe_ci_low"] <= ctl["probe_score"] <= ctl["probe_ci_high"]

    # runs made before the probe control get it back from their cached fits, unchanged and without refitting;
    # runs that saved no generations get them on request
    counters.update(fit=0, eval=0)
    first = next(iter(info["runs"]))
    path = root / "runs" / first / "control.json"
    full = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in full.items() if not k.startswith("probe_")}))
    assert run.backfill(root, progress=False) == [root / "runs" / first]
    back = json.loads(path.read_text())
    nums = [k for k, v in full.items() if isinstance(v, float)]
    assert {k: back[k] for k in nums} == pytest.approx({k: full[k] for k in nums}) and "probe_added" in back
    assert back["probe_layers"] == full["probe_layers"] and "probe_score_d0.5" in nums
    assert run.backfill(root, progress=False) == [] and counters == {"fit": 0, "eval": 0}
    assert not (root / "runs" / first / "samples.json").exists()
    every = list((root / "runs").glob("*/DONE"))  # this comparison's 3 runs and the earlier mean_diff run
    assert len(run.backfill(root, samples=2, progress=False)) == len(every) == 4
    gen = json.loads((root / "runs" / first / "samples.json").read_text())
    assert len(gen) == 2 * 3 and {g["coeff"] for g in gen} == {-1.0, 0.0, 1.0} and counters["fit"] == 0

    # rerun: every run is complete, so nothing is fitted or evaluated again
    counters.update(fit=0, eval=0)
    assert _cli(monkeypatch, *args) == 0
    assert counters == {"fit": 0, "eval": 0}
    # a new seed reuses nothing but the deterministic method stays at one run
    assert _cli(monkeypatch, *args[:4], "3", *args[5:]) == 0
    assert counters == {"fit": 1, "eval": 1}


def test_compare_configs_seeds_and_coefficients() -> None:
    cfgs = compare_configs(["random", "prompt", "mean_diff"], 3, "tiny-llama", "honesty", ["dd-honesty"],
                           [-2.0, -1.0, 0.0, 1.0, 2.0], eval_limit=8)
    assert [(c.method, c.seed) for c in cfgs] == [("random", 0), ("random", 1), ("random", 2), ("prompt", 0), ("mean_diff", 0)]
    assert cfgs[0].coeffs == (-2.0, -1.0, 0.0, 1.0, 2.0)
    assert cfgs[3].coeffs == (-1.0, 0.0, 1.0)  # a prompt is on or off: only c in {-1, 0, +1}
    short = compare_configs(["prompt_short"], 1, "tiny-llama", "honesty", ["dd-honesty"], [-1.0, 0.0, 1.0])
    assert (short[0].method, short[0].params) == ("prompt", {"variant": "short"})
    with pytest.raises(ValueError, match="must include 0"):
        compare_configs(["random"], 1, "tiny-llama", "honesty", ["dd-honesty"], [-1.0, 1.0])
    with pytest.raises(ValueError, match="--seeds must be >= 1"):
        compare_configs(["random"], 0, "tiny-llama", "honesty", ["dd-honesty"], [-1.0, 0.0, 1.0])


def test_quick_defaults_and_explicit_options_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from innerpissa.experiments.compare import QUICK

    concept = tmp_path / "honesty_small.yaml"
    concept.write_text(yaml.safe_dump(TINY_CONCEPT))
    base = ["compare", "--quick", "--model", "tiny-llama", "--concept", str(concept), "--methods", "random",
            "--pmass-min", "0", "--root", str(tmp_path / "root"), "--out", str(tmp_path / "out"), "--overwrite"]
    assert _cli(monkeypatch, *base) == 0
    runs = list(json.loads((tmp_path / "out" / "compare.json").read_text())["runs"].values())
    assert len(runs) == QUICK["seeds"] == 1
    assert (runs[0]["eval_limit"], runs[0]["n_pairs"], runs[0]["datasets"]) == (QUICK["eval_limit"], QUICK["n_pairs"], ["dd-honesty"])
    assert _cli(monkeypatch, *base, "--seeds", "2", "--eval-limit", "12") == 0
    runs = list(json.loads((tmp_path / "out" / "compare.json").read_text())["runs"].values())
    assert sorted((r["seed"], r["eval_limit"]) for r in runs) == [(0, 12), (1, 12)]  # keys sorted by hash
