"""Table 1 on SmolLM2-135M (issue 4 §3) -> bench/results/quality.json and results/quality/*.md|csv|png.

Every method is fit on the same honesty pairs and scored on the *reporting* half of dd-honesty (split by
dilemma; tuning only ever looked at the other half) and on TruthfulQA, at c = -1, 0, +1. Seed-dependent
methods get --seeds seeds, deterministic ones one. Resumable: runs and fits live under --root (cached by
config hash), so rerunning continues where it stopped. Run it in the background:
    nohup python bench/quality.py > quality.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import write  # noqa: E402

from innerpissa.experiments.compare import compare_configs, run_compare  # noqa: E402
from innerpissa.experiments.collect import collect  # noqa: E402
from innerpissa.experiments.tables import table1  # noqa: E402
from innerpissa.io import atomic_write_text  # noqa: E402

METHODS = "innerpissa,prompt,pca,mean_diff,random,sspace,lora"


def verdict(stats, dataset: str) -> dict:
    """The seed's target: InnerPiSSA Gain >= 1.5x prompting and >= 3x PCA at dNLL <= 0.2, CIs excluding parity,
    and a Yes-bias-controlled effect with p < 0.01. 'CIs exclude parity' = InnerPiSSA's Gain CI lies above the
    baseline's Gain CI (non-overlap); NaN CIs make that part untestable (reported as None)."""
    by = stats.set_index("label")
    if "innerpissa" not in by.index:
        return {"error": "no innerpissa row"}
    ip = by.loc["innerpissa"]
    out = {"dataset": dataset, "innerpissa_gain": ip["gain"], "innerpissa_dnll": ip["dnll"],
           "innerpissa_yesbias_effect": ip["yesbias_effect"], "innerpissa_yesbias_p": ip["yesbias_effect_p"],
           "dnll_ok": bool(ip["dnll"] <= 0.2), "yesbias_ok": bool(ip["yesbias_effect_p"] < 0.01 and ip["yesbias_effect"] > 0)}
    for base, factor in (("prompt", 1.5), ("pca", 3.0)):
        if base not in by.index:
            continue
        b = by.loc[base]
        # Gain is signed: a ratio only means "x times better" when both move the target the intended way
        ratio = ip["gain"] / b["gain"] if ip["gain"] > 0 and b["gain"] > 0 else np.nan
        sep = None if not (np.isfinite(ip.get("gain_lo", np.nan)) and np.isfinite(b.get("gain_hi", np.nan))) \
            else bool(ip["gain_lo"] > b["gain_hi"])
        out[f"gain_ratio_vs_{base}"] = ratio
        out[f"ratio_ok_vs_{base}"] = bool(ratio >= factor)
        out[f"ci_excludes_parity_vs_{base}"] = sep
    out["target_met"] = bool(out["dnll_ok"] and out["yesbias_ok"] and all(
        out.get(f"ratio_ok_vs_{b}") and out.get(f"ci_excludes_parity_vs_{b}") for b in ("prompt", "pca")))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default=METHODS)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--one-seed", default="lora,random", help="seed-dependent methods run with one seed (time budget)")
    ap.add_argument("--eval-limit", type=int, default=120, help="rows per dataset (whole dilemmas)")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: TrainConfig)")
    ap.add_argument("--n-pairs", type=int, default=128, help="training pairs shared by every method")
    ap.add_argument("--root", type=Path, default=Path("runs/bench-quality"))
    ap.add_argument("--out", type=Path, default=Path("results/quality"))
    args = ap.parse_args()
    datasets = ["dd-honesty", "truthfulqa"]
    methods = args.methods.split(",")
    one = [m for m in methods if m in args.one_seed.split(",")]
    cfgs = [c for group, seeds in ((one, 1), ([m for m in methods if m not in one], args.seeds)) if group
            for c in compare_configs(group, seeds, "smollm2-135m", "honesty", datasets, [-1.0, 0.0, 1.0],
                                     args.eval_limit, "report", args.steps, n_pairs=args.n_pairs)]
    t = time.perf_counter()
    res = run_compare(cfgs, args.root, args.out)
    coll = collect(args.root)
    coll = coll[coll["run_hash"].isin({c.content_hash() for c in cfgs})]
    stats = {ds: table1(coll, ds).attrs["stats"] for ds in datasets}
    write("quality", {
        "model": "smollm2-135m (SmolLM2-135M-Instruct Q4_1 dequantized to fp32)",
        "sizes": {"methods": methods, "seeds": args.seeds, "one_seed": one, "eval_limit": args.eval_limit,
                  "eval_part": "report", "steps": args.steps, "n_pairs": args.n_pairs, "coeffs": [-1, 0, 1], "n_runs": len(cfgs)},
        "wall_time_s_this_invocation": round(time.perf_counter() - t, 1),
        "compute_s_all_runs": round(sum(json.loads((args.root / "runs" / c.content_hash() / "config.json").read_text())
                                        .get("wall_seconds", 0.0) for c in cfgs), 1),
        "note": "runs are cached by config hash; compute_s_all_runs sums each run's recorded wall time "
                "(fits included), measured with OMP_NUM_THREADS=1 while another benchmark shared the 2 cores",
        "failed": res.summary.failed,
        "table1": {ds: s.to_dict(orient="records") for ds, s in stats.items()},
        "target": verdict(stats["dd-honesty"], "dd-honesty"),
    })
    write_compact(coll, stats, args.out / "summary.md")
    print((args.out / "summary.md").read_text())


def write_compact(coll, stats: dict, path: Path) -> None:
    """A short README table per dataset: effect with CI and p, dNLL, Gain, and the raw Yes-shift (mean over seeds)."""
    lines = []
    for ds, st in stats.items():
        raw = coll[coll["dataset"] == ds].groupby("method")["raw_shift"].mean()
        lines += [f"**{ds}**", "", "| method | seeds | effect per unit c [95% CI] | p | ΔNLL at |c|=1 | Gain | raw Yes-shift per unit c |",
                  "|---|---|---|---|---|---|---|"]
        for _, r in st.iterrows():
            lines.append(f"| {r['label']} | {int(r['n_seeds'])} | {r['effect']:+.3f} [{r['effect_lo']:+.3f}, {r['effect_hi']:+.3f}] | "
                         f"{r['effect_p']:.2g} | {r['dnll']:.3f} | {r['gain']:.0f} | {raw.get(r['method'], np.nan):+.3f} |")
        lines.append("")
    atomic_write_text(path, "\n".join(lines))


if __name__ == "__main__":
    main()
