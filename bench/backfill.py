"""Add to finished bench runs what runs made before it lack (`experiments.run.backfill`): the hidden-state probe
control and, with --samples N, N steered generations at c = -1, 0, +1 (samples.json, shown in the report).

    .venv/bin/python bench/backfill.py runs/bench-budget --samples 8
    .venv/bin/python bench/budget.py --aggregate-only     # then re-aggregate

Uses each run's cached fit and calibration only (never refits); the unsteered probe basis is computed once per
model and pair set. About 25 s per run on SmolLM2 alone; a heavy job: pause a running bench rather than share
the two cores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from innerpissa.experiments.run import backfill


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("roots", nargs="+", type=Path, help="bench roots that contain runs/ (e.g. runs/bench-budget)")
    ap.add_argument("--samples", type=int, default=0, help="steered generations per run for runs that saved none")
    args = ap.parse_args()
    if bad := [r for r in args.roots if not (r / "runs").is_dir()]:
        print(f"error: {bad[0]} has no runs/ folder: pass a bench root such as runs/bench-budget", file=sys.stderr)
        sys.exit(2)
    for root in args.roots:
        print(f"{root}: {len(backfill(root, samples=args.samples))} runs updated")


if __name__ == "__main__":
    main()
