"""Add the hidden-state probe control (`eval.control.probe_control`) to finished bench runs made before it existed.

    nice -n 19 .venv/bin/python bench/probe_backfill.py runs/bench-budget runs/bench-quality
    .venv/bin/python bench/budget.py --aggregate-only     # then re-aggregate

Uses each run's cached fit and calibration only (never refits); the unsteered probe basis is computed once per
model and pair set. Light next to a bench run (forwards of the 57 held-out pairs per run), so it can run niced
beside one.
"""

from __future__ import annotations

import sys
from pathlib import Path

from innerpissa.experiments.run import backfill_probe


def main() -> None:
    roots = [Path(a) for a in sys.argv[1:]]
    if not roots or any(not (r / "runs").is_dir() for r in roots):
        print("error: pass one or more bench roots that contain runs/ (e.g. runs/bench-budget)", file=sys.stderr)
        sys.exit(2)
    for root in roots:
        print(f"{root}: probe added to {len(backfill_probe(root))} runs")


if __name__ == "__main__":
    main()
