"""Ablation table on SmolLM2-135M (issue 5 §4) -> bench/results/ablations.json and results/ablations/*.md|csv.

Presets from innerpissa/experiments/ablations.py, each a delta from the default InnerPiSSA run; `full` gets
--full-seeds seeds, every other preset one. Scored on the *tuning* half of dd-honesty (split by dilemma):
ablations are where design decisions are made, so they never touch the reporting half used by Table 1.
Resumable (runs cached by config hash under --root); run in the background and rerun to continue.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import write  # noqa: E402

from innerpissa.experiments.ablations import apply_preset  # noqa: E402
from innerpissa.experiments.collect import collect  # noqa: E402
from innerpissa.experiments.sweep import make_config, run_inprocess  # noqa: E402
from innerpissa.experiments.tables import ideas_that_failed, table2_ablations, write_table  # noqa: E402

PRESETS = ("no_rotate_v,rotate_u,no_scale,scale_add,scale_tanh,no_svd,no_coherence,no_monotonic,adaptive,"
           "coh_weight_1,coh_weight_10,depth_0.5,last3,modules_o_proj,modules_down_proj,rank_16,n_train_32")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default=PRESETS)
    ap.add_argument("--full-seeds", type=int, default=3)
    ap.add_argument("--eval-limit", type=int, default=80)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--n-pairs", type=int, default=128, help="training pairs shared by every run")
    ap.add_argument("--root", type=Path, default=Path("runs/bench-ablations"))
    ap.add_argument("--out", type=Path, default=Path("results/ablations"))
    args = ap.parse_args()
    params = {"train": {"steps": args.steps}} if args.steps else {}
    base = make_config({"model": "smollm2-135m", "concept": "honesty", "method": "innerpissa", "params": params,
                        "datasets": ["dd-honesty"], "coeffs": [-1.0, 0.0, 1.0], "eval_limit": args.eval_limit,
                        "eval_part": "tune", "n_pairs": args.n_pairs})
    cfgs = []
    for seed in range(args.full_seeds):
        cfgs.append(apply_preset(base.model_copy(update={"seed": seed}), "full"))
    for name in args.presets.split(","):
        cfgs.append(apply_preset(base, name))
    t = time.perf_counter()
    summary = run_inprocess(cfgs, args.root)
    coll = collect(args.root)
    coll = coll[coll["run_hash"].isin({c.content_hash() for c in cfgs})]
    t2 = table2_ablations(coll, "dd-honesty")
    write_table(t2, args.out / "table2_ablations")
    failed = ideas_that_failed(coll, "dd-honesty")
    write_table(failed, args.out / "ideas_that_failed")
    write("ablations", {
        "model": "smollm2-135m (SmolLM2-135M-Instruct Q4_1 dequantized to fp32)",
        "sizes": {"presets": args.presets.split(","), "full_seeds": args.full_seeds, "other_seeds": 1,
                  "eval_limit": args.eval_limit, "eval_part": "tune", "steps": args.steps, "n_pairs": args.n_pairs, "coeffs": [-1, 0, 1]},
        "wall_time_s": round(time.perf_counter() - t, 1),
        "failed": summary.failed,
        "table2": t2.attrs["stats"].to_dict(orient="records"),
    })
    print((args.out / "table2_ablations.md").read_text())


if __name__ == "__main__":
    main()
