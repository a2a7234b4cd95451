"""Why a test bed's random null is wide: every finished run's side-balanced effect split into its two strata.

The side-balanced effect is the mean of two slopes on c: one over the dilemmas whose honest choice is to act, one
over those whose honest choice is not to act (a keenness to act moves them in opposite signed directions and
cancels). This splits each run of a quality bench into those two slopes, the per-stratum SD of the random
directions, and how much of each run's per-dilemma pattern (within a stratum) matches the prompt's.
-> bench/results/null_anatomy.json
Run: python bench/null_anatomy.py [--model qwen2.5-coder-1.5b] [--dataset dd-honesty] [--kl 0.048]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, write  # noqa: E402

from innerpissa.eval.metrics import label_strata, signed  # noqa: E402

RUNS = RESULTS / "quality_runs" / "runs"


def finished_runs(model: str, dataset: str, kl: float) -> dict[str, pd.DataFrame]:
    """name -> score table of every finished reporting-half run of `model` on `dataset` in the comparison at KL
    `kl` (prompting: its engineered variant, the comparison's prompting row)."""
    out = {}
    for d in sorted(RUNS.iterdir()):
        run = json.loads((d / "config.json").read_text()).get("run", {})
        if not (d / "DONE").exists() or run.get("model") != model or run.get("eval_part") != "report" \
                or run.get("eval_limit") or run.get("kl") is None or not np.isclose(run["kl"], kl):
            continue
        if run["method"] == "prompt" and run["params"].get("variant") != "engineered":
            continue
        table = pd.read_parquet(d / "scores.parquet")
        table = table[table["dataset"] == dataset]
        if len(table):
            name = f"{run['method']} seed {run['seed']}"
            out.setdefault(name, table)  # a prompting rerun (same variant) is the same row
    return out


def per_dilemma_slopes(table: pd.DataFrame, dim: str) -> pd.DataFrame:
    """Per dilemma: its stratum (the side holding the +1 label) and the slope on c of its mean signed log-ratio."""
    s = signed(table, dim)
    y = s.groupby(["dilemma_id", "coeff"])["y"].mean().unstack("coeff")
    c = y.columns.to_numpy(float)
    slope = (y.to_numpy() - y.to_numpy().mean(1, keepdims=True)) @ (c - c.mean()) / ((c - c.mean()) ** 2).sum()
    return pd.DataFrame({"stratum": label_strata(table, dim).reindex(y.index), "slope": slope}, index=y.index)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--dataset", default="dd-honesty")
    ap.add_argument("--dim", default="Value/honesty")
    ap.add_argument("--kl", type=float, default=0.048)
    args = ap.parse_args()
    runs = {k: per_dilemma_slopes(t, args.dim) for k, t in finished_runs(args.model, args.dataset, args.kl).items()}
    prompt = next(k for k in runs if k.startswith("prompt"))
    strata = runs[prompt]["stratum"]
    sizes = strata.value_counts().to_dict()

    def centred(df: pd.DataFrame) -> pd.Series:
        return df["slope"] - df.groupby("stratum")["slope"].transform("mean")

    rows = []
    for name, df in runs.items():
        by = df.groupby("stratum")["slope"].mean()
        both = pd.concat([centred(df), centred(runs[prompt])], axis=1, join="inner")
        rows.append({"run": name, **{f"slope_{k}": float(v) for k, v in by.items()}, "effect": float(by.mean()),
                     "n_dilemmas": len(df), "pattern_corr_with_prompt": float(both.corr().iloc[0, 1])})
    table = pd.DataFrame(rows)
    rnd = table[table["run"].str.startswith("random")]
    res = {
        "model": args.model, "dataset": args.dataset, "dim": args.dim, "kl": args.kl,
        "strata_sizes": sizes, "runs": rows, "n_random": len(rnd),
        "random_sd": {c: float(rnd[c].std(ddof=1)) for c in table.columns if c.startswith(("slope_", "effect"))
                      or c == "pattern_corr_with_prompt"},
        "reading": "slope_<side>: mean slope on c (nats per unit c) of the signed log-ratio over the dilemmas whose "
                   "honest choice is <side>; effect = their mean (the side-balanced effect); "
                   "pattern_corr_with_prompt: correlation over dilemmas, within strata, with the prompt's slopes",
    }
    print(table.round(3).to_string(index=False))
    print(write("null_anatomy", res))


if __name__ == "__main__":
    main()
