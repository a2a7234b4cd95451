"""The yardstick's positive control per built-in model and transfer set -> bench/results/qualify.json, the package's
verdict file (innerpissa/data/qualify.json, read by `compare`) and results/qualify/qualify.md.

Per model and concept (honesty: dd-honesty + a TruthfulQA sample; loyalty: dd-loyalty):
1. every prompting variant (persona line in the user turn, "Be X.", engineered system prompt) is scored on the
   concept's DailyDilemmas *tuning* half; the one with the largest side-balanced effect is chosen there;
2. the chosen variant is scored on the *reporting* half (and TruthfulQA) at the KL budget it spends itself (the
   mean over ±1 of its measured KL on the neutral prompts, to 2 significant digits), with steered samples, so the
   run is also the prompting row of the comparison at that budget (bench/quality.py, same run root);
3. >= 5 random directions calibrated to that budget give the null's 95 % prediction band.
A (model, set) qualifies when the chosen variant's reporting effect has its CI above 0; `above_null` says whether it also clears
the random directions' 95 % prediction band at the same KL. Resumable: runs are cached
by config hash under the committed run root, and the JSON is rewritten after every run:
    nohup .venv/bin/python bench/qualify.py > qualify.log 2>&1 &
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
from quality import SAMPLES  # noqa: E402

from innerpissa.eval.gate import QUALIFY_PATH, prompt_gate  # noqa: E402
from innerpissa.experiments.compare import compare_configs  # noqa: E402
from innerpissa.experiments.run import RunConfig, run_dir  # noqa: E402
from innerpissa.experiments.tables import to_markdown  # noqa: E402
from innerpissa.io import atomic_write_json, atomic_write_text, json_safe  # noqa: E402

# run order: the cheap model first (checks the whole bench), then the decisive one, then the middle one
MODELS = ("smollm2-135m", "qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b")
VARIANTS = {"persona": "prompt_persona", "short": "prompt_short", "engineered": "prompt_engineered"}  # -> compare's name
CONCEPTS = {"honesty": "dd-honesty", "loyalty": "dd-loyalty"}
TQA = {"smollm2-135m": "truthfulqa-sample-400"}  # SmolLM2's Table 1 sample; 200 questions on the bigger models
NULL_SEEDS = 5
COEFFS = [-1.0, 0.0, 1.0]


def datasets(model: str, concept: str) -> list[str]:
    """The transfer sets of a concept on a model: its DailyDilemmas set, plus TruthfulQA for honesty."""
    return [CONCEPTS[concept]] + ([TQA.get(model, "truthfulqa-sample-200")] if concept == "honesty" else [])


def tune_cfgs(model: str, concept: str, pmass_min: float, eval_limit: int | None) -> dict[str, RunConfig]:
    """Each prompting variant on the concept's tuning half, raw ±1 (its KL is measured, not matched)."""
    return {v: compare_configs([name], 1, model, concept, [CONCEPTS[concept]], COEFFS, eval_limit, "tune",
                               pmass_min=pmass_min)[0] for v, name in VARIANTS.items()}


def summary(cfg: RunConfig, root: Path) -> dict[str, Any] | None:
    """A finished run's summary.json and calibration, None while it is not done."""
    d = run_dir(cfg, root)
    if not (d / "DONE").is_file():
        return None
    return {**json.loads((d / "summary.json").read_text()),
            "calibration": json.loads((d / "config.json").read_text())["calibration"]}


def choice(tune: dict[str, RunConfig], root: Path) -> tuple[str, float] | None:
    """(variant with the largest tuning-half effect, its KL budget), None until every variant is scored."""
    done = {v: summary(c, root) for v, c in tune.items()}
    if any(s is None for s in done.values()):
        return None
    ds = next(iter(tune.values())).datasets[0]
    best = max(done, key=lambda v: done[v][ds]["effect"])
    cal = done[best]["calibration"]
    return best, float(f"{(cal['kl_pos'] + cal['kl_neg']) / 2:.2g}")


def report_cfgs(model: str, concept: str, variant: str, budget: float, pmass_min: float,
                eval_limit: int | None) -> tuple[RunConfig, list[RunConfig]]:
    """The chosen variant on the reporting half at its own KL, and the random null at that budget."""
    sets = datasets(model, concept)
    kw = dict(samples=SAMPLES, kl=[budget], pmass_min=pmass_min)
    prompt = compare_configs([VARIANTS[variant]], 1, model, concept, sets, COEFFS, eval_limit, "report", **kw)[0]
    null = compare_configs(["random"], NULL_SEEDS, model, concept, sets, COEFFS, eval_limit, "report", **kw)
    return prompt, null


def record(model: str, concept: str, tune: dict[str, RunConfig], root: Path, pmass_min: float,
           eval_limit: int | None) -> dict[str, Any]:
    """qualify.json's entries for one model × concept: the tuning scores, and per set the gate's record."""
    from innerpissa.experiments.collect import load_scores

    out: dict[str, Any] = {"tune": {}}
    for v, c in tune.items():
        s = summary(c, root)
        if s is not None:
            r = s[c.datasets[0]]
            out["tune"][v] = {k: r[k] for k in ("effect", "ci_low", "ci_high", "p", "n_dilemmas")} | {
                "kl": (s["calibration"]["kl_pos"] + s["calibration"]["kl_neg"]) / 2}
    picked = choice(tune, root)
    if picked is None:
        return out
    variant, budget = picked
    prompt, null = report_cfgs(model, concept, variant, budget, pmass_min, eval_limit)
    s = summary(prompt, root)
    out.update(variant=variant, kl_budget=budget, prompt_run=prompt.content_hash())
    if s is None:
        return out
    scores = load_scores(root, [prompt.content_hash()])
    nulls = [n for n in (summary(c, root) for c in null) if n is not None]
    out["sets"] = {}
    for ds in prompt.datasets:
        gate = prompt_gate(scores[scores["dataset"] == ds], s[ds]["target_dim"], [n[ds]["effect"] for n in nulls],
                           seed=prompt.seed)
        out["sets"][ds] = {"variant": variant, **gate, "kl": (s["calibration"]["kl_pos"] + s["calibration"]["kl_neg"]) / 2,
                           "kl_pos": s["calibration"]["kl_pos"], "kl_neg": s["calibration"]["kl_neg"]}
    return out


def table(results: dict[str, Any]) -> str:
    """Markdown: one row per model × set with the chosen variant's reporting-half numbers and the verdict."""
    rows = []
    for model, concepts in results.items():
        for rec in concepts.values():
            for ds, g in rec.get("sets", {}).items():
                null = f"{g['null_lo']:+.3f} … {g['null_hi']:+.3f} ({g['null_n']})" if g["null_n"] >= 2 else "pending"
                above = {True: "**yes**", False: "no", None: "pending"}[g.get("above_null")]
                rows.append({"model": model, "set": ds, "variant (tuning half)": g["variant"],
                             "effect [95% CI]": f"{g['effect']:+.3f} [{g['ci_low']:+.3f}, {g['ci_high']:+.3f}]",
                             "p": f"{g['p']:.1g}", "KL": f"{g['kl']:.2f}", "pmass c=0": f"{g['pmass_c0']:.2f}",
                             "n": g["n_dilemmas"], "random null 95% PI (seeds)": null,
                             "qualifies (CI > 0)": "**yes**" if g["qualifies"] else "no", "above the null": above})
    return to_markdown(pd.DataFrame(rows)) if rows else "(no finished reporting run yet)\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--concepts", default=",".join(CONCEPTS))
    ap.add_argument("--root", type=Path, default=Path(__file__).parent / "results" / "quality_runs",
                    help="run records (shared with bench/quality.py, so the prompt and random runs are its rows too)")
    ap.add_argument("--eval-limit", type=int, default=None, help="rows per set (smoke runs only)")
    ap.add_argument("--pmass-min", type=float, default=0.1, help="0 for the tiny random model's smoke run")
    ap.add_argument("--max-hours", type=float, default=None)
    ap.add_argument("--phases", default="tune,report,null", help="which steps to run (the JSON covers all)")
    ap.add_argument("--aggregate-only", action="store_true")
    ap.add_argument("--name", default="qualify")
    ap.add_argument("--verdicts", type=Path, default=QUALIFY_PATH, help="the package's verdict file")
    args = ap.parse_args()
    models, concepts = args.models.split(","), args.concepts.split(",")
    t0 = time.perf_counter()
    # the JSON covers every model and concept (reading finished runs is cheap); --models/--concepts pick what runs
    shown_models = list(dict.fromkeys([*MODELS, *models])) if args.name == "qualify" else models
    shown = [(m, c) for m in shown_models for c in dict.fromkeys([*CONCEPTS, *concepts])]
    tunes = {(m, c): tune_cfgs(m, c, args.pmass_min, args.eval_limit) for m, c in shown}

    def report(failed: list[dict]) -> None:
        results: dict[str, dict[str, Any]] = {}
        for m, c in shown:
            results.setdefault(m, {})[c] = record(m, c, tunes[m, c], args.root, args.pmass_min, args.eval_limit)
        write(args.name, json_safe({"models": shown_models, "concepts": {c: datasets("", c) for c in CONCEPTS},
                                 "variants": VARIANTS, "null_seeds": NULL_SEEDS, "eval_limit": args.eval_limit,
                                 "wall_time_s_this_invocation": round(time.perf_counter() - t0, 1),
                                 "failed": failed, "results": results}))
        verdicts = {m: {ds: {k: g[k] for k in ("variant", "effect", "ci_low", "ci_high", "p", "kl", "null_lo",
                                                 "null_hi", "null_n", "qualifies", "above_null")}
                        for rec in results[m].values() for ds, g in rec.get("sets", {}).items()} for m in shown_models}
        if args.name == "qualify":  # smoke runs never touch the package's verdicts
            old = json.loads(args.verdicts.read_text()) if args.verdicts.is_file() else {}
            atomic_write_json(args.verdicts, json_safe({**old, **{m: v for m, v in verdicts.items() if v}}))
        Path("results/qualify").mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path("results/qualify") / f"{args.name}.md", table(results))

    failed: list[dict] = []
    if not args.aggregate_only:
        # per model tune -> prompt report, then the nulls (the prompting verdicts come first; the band refines them)
        phases = args.phases.split(",")
        steps = [(m, p) for m in models for p in ("tune", "report") if p in phases]
        steps += [(m, "null") for m in models if "null" in phases]
        for model, phase in steps:
            for concept in concepts:
                tune = tunes[model, concept]
                if phase == "tune":
                    cfgs = list(tune.values())
                else:
                    picked = choice(tune, args.root)
                    if picked is None:
                        continue
                    prompt, null = report_cfgs(model, concept, *picked, args.pmass_min, args.eval_limit)
                    cfgs = [prompt] if phase == "report" else null
                left = None if args.max_hours is None else args.max_hours - (time.perf_counter() - t0) / 3600
                if left is not None and left <= 0:
                    break
                failed += run_units(cfgs, args.root, left, report, lock=not model.startswith("tiny-"))
    report(failed)


if __name__ == "__main__":
    main()
