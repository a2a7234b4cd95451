"""Run and fit hashes are stable: literal references for a few configs, and every committed run record's hash
reproduces its directory name. A refactor that changes either would silently orphan cached fits and runs."""

import json
from pathlib import Path

import pytest

from innerpissa.experiments.compare import compare_configs
from innerpissa.experiments.run import RunConfig, stored_run

QWEN, SMOL = "qwen2.5-coder-1.5b", "smollm2-135m"
BOTH = ["dd-honesty", "truthfulqa-sample-200"]
RUNS = Path(__file__).resolve().parent.parent / "bench" / "results" / "quality_runs" / "runs"

# (method or alias, seed, model, datasets, KL budget, content hash, fit hash)
REFERENCE = [
    ("innerpissa", 0, QWEN, BOTH, 0.1, "b7173c2c6fa0", "86d6cd4f2e21"),
    ("innerpissa:reprpo-v0", 0, QWEN, BOTH, None, "0044ce06e3b4", "80cd3c5e9fc3"),
    ("prompt", 0, SMOL, BOTH, None, "c88a2310ec62", "f593d90bb0d2"),  # the persona line: no gate verdict on SmolLM2
    ("prompt_engineered", 0, QWEN, BOTH, 0.048, "9b80a814072c", "197c57ff9bef"),
    ("random", 3, QWEN, BOTH, 0.048, "d1c6148dcc35", "b77671d311d1"),
    ("bipo", 0, SMOL, ["dd-honesty"], None, "60ecc003da01", "b89baf376171"),
    ("lora", 0, SMOL, ["dd-honesty"], None, "5057c821083e", "5aa2ae4e18af"),
    ("mean_diff", 0, SMOL, BOTH, 0.1, "ddf14082db9d", "aa5b9f82b740"),
]


@pytest.mark.parametrize("method,seed,model,datasets,kl,content,fit", REFERENCE, ids=[r[0] for r in REFERENCE])
def test_reference_hashes(method, seed, model, datasets, kl, content, fit):
    cfgs = compare_configs([method], seed + 1, model, "honesty", datasets, [-1.0, 0.0, 1.0],
                           kl=None if kl is None else [kl])
    (cfg,) = [c for c in cfgs if c.seed == seed]
    assert (cfg.content_hash(), cfg.fit_hash()) == (content, fit)


def test_committed_run_hashes_reproduce():
    done = sorted(p.parent for p in RUNS.glob("*/DONE"))
    assert done, f"no finished runs under {RUNS}"
    for d in done:
        cfg = json.loads((d / "config.json").read_text())
        assert RunConfig(**stored_run(cfg["run"])).content_hash() == d.name, d
