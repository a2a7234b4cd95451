"""Rerun finished quality-bench runs on this machine's CPU and compare -> bench/results/cpu_recheck.json.

bf16 kernels differ between CPUs (Intel AMX vs AMD AVX512-BF16 round differently), and the quality bench's runs span
sessions on both. This measures what that does to a run: the same config (same seed, same calibration budget)
rescored here, row by row at c = 0 (the base model) and as the run's headline numbers. Runs are picked from the
committed records by method / seed / budget; each is redone from scratch in a scratch root (its fit too):
    .venv/bin/python bench/cpu_recheck.py --method random --seed 0 --kl 0.1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from common import heavy_lock, write  # noqa: E402

from innerpissa.experiments.run import RunConfig, run_one, stored_run  # noqa: E402
from innerpissa.io import json_safe  # noqa: E402
from innerpissa.precision import cpu_record  # noqa: E402

HEADLINE = ("effect", "ci_low", "ci_high", "raw_shift", "action_bias", "coeff_pos", "coeff_neg", "dnll")


def pick(root: Path, method: str, seed: int, kl: float) -> list[Path]:
    """Finished runs of `method` / `seed` at KL budget `kl` under `root`."""
    out = []
    for d in sorted((root / "runs").glob("*")):
        if not (d / "DONE").is_file():
            continue
        run = json.loads((d / "config.json").read_text())["run"]
        if run["method"] == method and run["seed"] == seed and run.get("kl") == kl:
            out.append(d)
    return out


def compare(old: Path, new: Path) -> dict:
    """Per dataset: the c = 0 rows' largest and median |difference| and the headline numbers, old vs new."""
    so, sn = (pd.read_parquet(d / "scores.parquet") for d in (old, new))
    summ_o, summ_n = (json.loads((d / "summary.json").read_text()) for d in (old, new))
    out = {}
    for ds in summ_o:
        a, b = ((s[(s["dataset"] == ds) & (s["coeff"] == 0.0)].sort_values("row_id").reset_index(drop=True)) for s in (so, sn))
        if not a["row_id"].equals(b["row_id"]):
            raise ValueError(f"{ds}: the rerun scored other rows than the record; the dataset changed since")
        rows = {col: {"max_abs_diff": float(np.nanmax(np.abs(a[col] - b[col]))),
                      "median_abs_diff": float(np.nanmedian(np.abs(a[col] - b[col]))),
                      "median_abs_value": float(np.nanmedian(np.abs(a[col])))} for col in ("logratio", "nll")}
        out[ds] = {"c0_rows": rows, "n_rows": len(a),
                   "headline": {k: {"recorded": summ_o[ds].get(k), "here": summ_n[ds].get(k)} for k in HEADLINE}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="random")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kl", type=float, default=0.1)
    ap.add_argument("--root", type=Path, default=Path(__file__).parent / "results" / "quality_runs")
    ap.add_argument("--scratch", type=Path, default=Path("runs/cpu_recheck"), help="where the reruns go")
    args = ap.parse_args()
    found = pick(args.root, args.method, args.seed, args.kl)
    if not found:
        print(f"error: no finished {args.method} seed {args.seed} run at KL {args.kl:g} under {args.root}: "
              "pick one that bench/quality.py has done", file=sys.stderr)
        sys.exit(2)
    results = []
    for old in found:
        record = json.loads((old / "config.json").read_text())
        cfg = RunConfig(**stored_run(record["run"]))
        with heavy_lock():
            new = run_one(cfg, args.scratch)
        results.append({"run_hash": old.name, "method": args.method, "seed": args.seed, "kl": args.kl,
                        "recorded_cpu": record.get("cpu", "not recorded (run made before CPU records)"),
                        "recorded_commit": record["code"]["git_commit"], "here_cpu": cpu_record(),
                        "wall_seconds": {"recorded": record["wall_seconds"],
                                         "here": json.loads((new / "config.json").read_text())["wall_seconds"]},
                        "datasets": compare(old, new)})
    print(json.dumps(json_safe(results), indent=1))
    write("cpu_recheck", json_safe({"runs": results}))


if __name__ == "__main__":
    main()
