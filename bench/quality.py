"""The powered Table 1 on SmolLM2-135M (issue 9 §3) -> bench/results/quality.json and results/quality/*.md|png.

Every method is fit on the same honesty pairs, calibrated per sign to each KL budget (`eval.calibrate`: the c at
which the mean token KL(base || steered) on held-out neutral prompts equals the budget, so "±1" is the same cost to
the model for every method) and scored on the whole *reporting* half of dd-honesty (dilemmas split by hash; tuning
only ever looked at the other half) and on TruthfulQA. Per method and budget: the side-balanced effect pooled over
seeds (dilemma × seed bootstrap), the paired difference to InnerPiSSA on the same dilemmas (a method "beats"
another only when that CI excludes 0), action bias, selectivity, and the references' metrics for the audit.
Random directions get many seeds: they are the null. Resumable (runs cached by config hash, done in priority
order, JSON rewritten after every run; the finished runs' records live in bench/results/quality_runs/, committed,
so the bench continues across sessions and checkouts):
    nohup .venv/bin/python bench/quality.py > quality.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from common import run_units, write  # noqa: E402

from innerpissa.eval.control import null_band  # noqa: E402
from innerpissa.eval.gate import gate_warnings, qualification  # noqa: E402
from innerpissa.experiments.collect import collect, kl_budget, load_scores  # noqa: E402
from innerpissa.experiments.compare import compare_configs  # noqa: E402
from innerpissa.experiments.figures import powered_forest  # noqa: E402
from innerpissa.experiments.run import RunConfig, run_dir  # noqa: E402
from innerpissa.experiments.tables import audit_correlations, powered_table, quality_rows, to_markdown  # noqa: E402
from innerpissa.io import atomic_write_text, json_safe  # noqa: E402

# InnerPiSSA (its default recipe, antipasto: the one recipe that passes the hidden-state positive control in the
# budget bench) first: it is the paired reference; then the baselines, the output-level rivals, and InnerPiSSA under
# the objective this project shipped first (reprpo-v0) and the seed code's recipe. This is the run order within a
# phase; tables use their own row order.
METHODS = "innerpissa,prompt,pca,mean_diff,sspace,lora,dora,pissa,bipo,dpo_lora,innerpissa:reprpo-v0,innerpissa:seed"
# TruthfulQA: 400 of its 817 questions (both answer orders): the whole set is 60 % of a run's time, and 400 paired
# questions x 3 seeds already resolve effects far below the dilemma set's
DATASETS = "dd-honesty,truthfulqa-sample-400"
# gentle: about the cost of today's random direction at c = 1 (dNLL ~0.05-0.09 on dd-honesty prompts); strong:
# 3x that, still inside the coherent range where the Yes/No answer keeps its probability mass (pmass >= 0.1)
KL_BUDGETS = "0.1,0.3"
SAMPLES = 8  # steered generations (c = -1, 0, +1) per run, in samples.json and the report


def plan(methods: list[str], seeds: int, random_seeds: int, budgets: list[float], datasets: list[str], model: str,
         eval_limit: int | None, n_pairs: int | None, pmass_min: float, one_seed: frozenset[str] = frozenset()
         ) -> list[RunConfig]:
    """Every run, in the order that answers the main questions first: InnerPiSSA seed 0 and its first null (3 random
    seeds); seed 0 of every baseline; the seeds of InnerPiSSA and of the output-level rivals (issue 12's question);
    the rest of the null (every "beats random" verdict needs it, and a run without a fit is the cheapest); the other
    recipes; the other seeds. Each fit's runs at the budgets (gentle, then strong) are adjacent, so a fit is made
    once even when a session ends between runs."""
    def cfgs(ms: list[str], n: int, kl: float) -> list[RunConfig]:
        return compare_configs(ms, n, model, "honesty", datasets, [-1.0, 0.0, 1.0], eval_limit, "report",
                               samples=SAMPLES, n_pairs=n_pairs, kl=[kl], pmass_min=pmass_min)

    def phase(c: RunConfig) -> int:
        alt_recipe = c.method == "innerpissa" and c.params.get("recipe", "antipasto") != "antipasto"
        if c.seed == 0:
            return 3 if alt_recipe else 1
        return 2 if c.method in ("innerpissa", "bipo", "dpo_lora") and not alt_recipe else 4

    per_budget = []
    for kl in budgets:
        main, rnd = [c for c in cfgs(methods, seeds, kl) if c.seed == 0 or c.method not in one_seed], cfgs(["random"], random_seeds, kl)
        head = [c for c in main if c.seed == 0][:1] + [c for c in rnd if c.seed < 3]
        rest = sorted((c for c in main if c not in head), key=phase)  # stable: method order within a phase
        null = [c for c in rnd if c.seed >= 3]
        per_budget.append(head + [c for c in rest if phase(c) <= 2] + null + [c for c in rest if phase(c) > 2])
    return [c for same_fit in zip(*per_budget, strict=True) for c in same_fit]


def cpu_label(cpu: dict | None) -> str:
    """'<model> (<bf16 flags>)' of a run record's CPU; 'not recorded' for runs made before CPU records."""
    if not cpu:
        return "not recorded"
    return f"{cpu.get('model') or 'model not recorded'} ({'+'.join(cpu.get('bf16_flags') or []) or 'no bf16 flags'})"


def aggregate(cfgs: list[RunConfig], root: Path, budgets: list[float], datasets: list[str], out: Path) -> dict[str, Any]:
    """quality.json's tables from the finished runs: per dataset × budget the powered rows, per dataset the audit."""
    done = [c.content_hash() for c in cfgs if (run_dir(c, root) / "DONE").is_file()]
    if not done:
        return {"tables": {}, "audit": {}, "n_dilemmas": {}, "control_null": {}}
    coll = collect(root)
    coll = coll[coll["run_hash"].isin(done)]
    scores = load_scores(root, done)
    tables: dict[str, dict[str, list]] = {}
    audit: dict[str, dict] = {}
    n_dilemmas: dict[str, int] = {}
    control_null: dict[str, dict[str, Any]] = {}  # per budget: the random directions' band of each positive control
    for kl in budgets:
        rnd = coll[(kl_budget(coll) == kl) & (coll["method"] == "random")].drop_duplicates("run_hash")
        control_null[f"{kl:g}"] = {name: null_band(rnd[col].tolist()) for name, col in
                                   (("r", "control_score"), ("probe", "control_probe_score"))}
    for ds in datasets:
        if ds not in set(coll["dataset"]):
            continue
        tables[ds], forest = {}, {}
        for kl in budgets:
            runs = coll[kl_budget(coll) == kl]
            if ds not in set(runs["dataset"]):
                continue
            shown = powered_table(runs, scores, ds)
            stats = shown.attrs["stats"]
            tables[ds][f"{kl:g}"], forest[f"{kl:g}"] = quality_rows(stats), stats
            n_dilemmas[ds] = max(n_dilemmas.get(ds, 0), int(pd.to_numeric(stats.get("n_dilemmas"), errors="coerce").max()))
            atomic_write_text(out / f"powered_{ds}_kl{kl:g}.md", to_markdown(shown) + "\n")
        unit = "questions" if ds.startswith("truthfulqa") else "dilemmas"
        powered_forest(forest, out / f"powered_{ds}.png", f"{ds}: {n_dilemmas[ds]} {unit}, effect against the random null")
        corr = audit_correlations(coll[coll["dataset"] == ds], ds).attrs["stats"].set_index("metric")
        per_method: dict[str, dict[str, Any]] = {}  # method → budget → the references' metrics at that budget
        for kl, rows in tables[ds].items():
            for r in rows:
                per_method.setdefault(r["method"], {})[kl] = r["audit"]
        audit[ds] = {"per_method": per_method, "corr_with_raw_shift": corr["corr_with_raw_shift"].to_dict(),
                     "corr_with_abs_raw_shift": corr["corr_with_abs_raw_shift"].to_dict(),
                     "corr_with_effect": corr["corr_with_effect"].to_dict(), "n_runs": corr["n_runs"].to_dict()}
    return {"tables": tables, "audit": audit, "n_dilemmas": n_dilemmas, "control_null": control_null}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=METHODS)
    ap.add_argument("--seeds", type=int, default=3, help="seeds of every method with randomness (LoRA family included)")
    ap.add_argument("--random-seeds", type=int, default=10, help="random-direction seeds: the null distribution")
    ap.add_argument("--one-seed", default="", help="comma list of methods run at seed 0 only (compute-bound rivals)")
    ap.add_argument("--kl", default=KL_BUDGETS, help="comma list of KL budgets (mean token KL), gentle then strong")
    ap.add_argument("--datasets", default=DATASETS)
    ap.add_argument("--eval-limit", type=int, default=None, help="rows per dataset (default: the whole reporting half)")
    ap.add_argument("--n-pairs", type=int, default=None, help="cap the training pairs (default: the concept's)")
    ap.add_argument("--model", default="smollm2-135m", help="smoke-test the bench with tiny-llama")
    ap.add_argument("--pmass-min", type=float, default=0.1, help="0 for the tiny random model's smoke run")
    ap.add_argument("--root", type=Path, default=Path(__file__).parent / "results" / "quality_runs",
                    help="run records; the default is committed (fits and plots ignored), so a fresh checkout resumes")
    ap.add_argument("--out", type=Path, default=Path("results/quality"), help="markdown tables per dataset × budget")
    ap.add_argument("--max-hours", type=float, default=None, help="stop starting new runs after this long")
    ap.add_argument("--aggregate-only", action="store_true")
    ap.add_argument("--name", default="quality", help="bench/results/<name>.json")
    args = ap.parse_args()
    budgets, datasets = [float(b) for b in args.kl.split(",")], args.datasets.split(",")
    cfgs = plan(args.methods.split(","), args.seeds, args.random_seeds, budgets, datasets, args.model,
                args.eval_limit, args.n_pairs, args.pmass_min, frozenset(filter(None, args.one_seed.split(","))))
    t0 = time.perf_counter()

    def report(failed: list[dict]) -> None:
        records = [json.loads((run_dir(c, args.root) / "config.json").read_text())
                   for c in cfgs if (run_dir(c, args.root) / "DONE").is_file()]
        n_done, compute = len(records), sum(r.get("wall_seconds", 0.0) for r in records)
        # bf16 kernels round differently per CPU (bench/cpu_recheck.py): say which CPUs the runs came from
        cpus = pd.Series([cpu_label(r.get("cpu")) for r in records]).value_counts()
        write(args.name, json_safe({
            "model": args.model, "kl_budgets": budgets, "kl_stat": "mean",
            "sizes": {"methods": args.methods, "seeds": args.seeds, "one_seed": args.one_seed, "random_seeds": args.random_seeds,
                      "datasets": datasets, "eval_part": "report", "eval_limit": args.eval_limit,
                      "n_pairs": args.n_pairs, "coeffs_budget_units": [-1, 0, 1]},
            "complete": n_done == len(cfgs), "n_runs_done": n_done, "n_runs_planned": len(cfgs),
            "wall_time_s_this_invocation": round(time.perf_counter() - t0, 1), "compute_s_done_runs": round(compute, 1),
            "runs_per_cpu": {str(k): int(v) for k, v in cpus.items()},
            "prompting_gate": {ds: qualification(args.model, ds) for ds in datasets},
            "failed": failed, **aggregate(cfgs, args.root, budgets, datasets, args.out)}))

    for line in gate_warnings(args.model, datasets):  # said before the runs and kept in the JSON
        print(line, flush=True)
    failed = [] if args.aggregate_only else run_units(cfgs, args.root, args.max_hours, report,
                                                           lock=not args.model.startswith("tiny-"))
    report(failed)


if __name__ == "__main__":
    main()
