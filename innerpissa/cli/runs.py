"""CLI commands `innerpissa sweep` and `innerpissa compare` (registered on the app by importing this module)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import pandas as pd
import typer
from rich.table import Table

from ..experiments.compare import QUICK
from ..models import DEFAULT_MODEL
from ..precision import HELP as PRECISION_HELP, check as check_precision
from .app import COEFF_MAX, app, check_coeffs, check_out, console, on_interrupt, warn

if TYPE_CHECKING:
    from ..experiments.run import RunConfig


def _rich(df: pd.DataFrame, title: str) -> Table:
    t = Table(title=title, show_lines=False)
    for col in df.columns:
        t.add_column(str(col))
    for row in df.itertuples(index=False):
        t.add_row(*map(str, row))
    return t


def _split(value: str, what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise ValueError(f"--{what} is empty: give a comma-separated list")
    return items


def parse_budgets(value: str) -> list[float]:
    """KL budgets from '0.05,0.5': positive numbers, else a one-line error naming the bad item."""
    out = []
    for item in _split(value, "kl"):
        try:
            b = float(item)
        except ValueError:
            b = float("nan")
        if not b > 0 or b == float("inf"):
            raise ValueError(f"--kl {value!r}: {item!r} is not a positive number of nats (e.g. --kl 0.05,0.5)")
        out.append(b)
    return out


def _runs_note(cfgs: list[RunConfig], root: Path) -> Callable[[], str]:
    """The interrupt note of sweep/compare: how many of the runs are finished (kept on disk) and how to continue."""
    from ..experiments.run import is_done

    def note() -> str:
        done = sum(is_done(c, root) for c in cfgs)
        return (f"{done} of {len(cfgs)} runs are finished and kept in {Path(root) / 'runs'}; rerun the same command "
                "to continue (finished runs are skipped, the interrupted one starts over)")

    return note


def check_sources(models: set[str], concepts: set[str]) -> None:
    """Fail before any run is written on a model path that does not exist or an unknown concept."""
    from ..concepts import load_concept
    from ..models import check_spec

    for spec in sorted(models):
        check_spec(spec)
    for name in sorted(concepts):
        load_concept(name)


@app.command()
def sweep(
    spec: Annotated[Path, typer.Argument(help="sweep spec YAML (see sweeps/*.yaml)")],
    root: Annotated[Path, typer.Option(help="results root: runs in ROOT/runs/<hash>/, fits in ROOT/fits/")] = Path("runs"),
    ray: Annotated[bool, typer.Option("--ray", help="run each run as a Ray task (also implied by $RAY_ADDRESS)")] = False,
    address: Annotated[str | None, typer.Option(help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")] = None,
    cpus_per_run: Annotated[float, typer.Option(min=0, help="Ray: CPUs declared per run")] = 1.0,
    gpus_per_run: Annotated[float, typer.Option(min=0, help="Ray: GPUs declared per run")] = 0.0,
    wandb: Annotated[bool, typer.Option("--wandb", help="log each run to Weights & Biases (offline without an API key)")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list the runs and exit")] = False,
) -> None:
    """Expand SPEC into runs and execute them, skipping complete runs and recording failures."""
    from ..eval.datasets import load_dataset
    from ..experiments.sweep import check_methods, expand, load_spec, run_inprocess, run_ray, wandb_logger

    check_out(root, True, "--root")  # a file is never a results root
    cfgs = expand(load_spec(spec))
    check_methods(cfgs)
    check_sources({c.model for c in cfgs}, {c.concept for c in cfgs})
    for name in sorted({d for cfg in cfgs for d in cfg.datasets}):
        load_dataset(name)  # an unknown name or a bad file fails here, not in every run
    far = sorted({c for cfg in cfgs for c in cfg.coeffs if abs(c) > COEFF_MAX})
    if far:
        warn(f"{spec}: coeffs {' '.join(f'{c:g}' for c in far)} outside the coherent range |c| <= {COEFF_MAX:g}")
    cons = console()
    if dry_run:
        rows = [{"run": c.content_hash(), "method": c.method, "preset": c.preset or "-", "seed": c.seed,
                 "params": c.params} for c in cfgs]
        cons.print(_rich(pd.DataFrame(rows), f"{spec}: {len(cfgs)} runs"))
        return
    on_done = wandb_logger(root) if wandb else None
    on_interrupt(_runs_note(cfgs, root))
    if ray or address or os.environ.get("RAY_ADDRESS"):
        summary = run_ray(cfgs, root, address, cpus_per_run, gpus_per_run, on_done=on_done)
    else:
        summary = run_inprocess(cfgs, root, on_done=on_done)
    cons.print(summary.table())
    if summary.failed:
        raise typer.Exit(1)


@app.command()
def compare(
    model: Annotated[str, typer.Option(help="base model spec")] = DEFAULT_MODEL,
    concept: Annotated[str, typer.Option(help="concept to fit on")] = "honesty",
    methods: Annotated[str, typer.Option(help="comma-separated methods")] = "innerpissa,prompt,pca,mean_diff,random,sspace,lora",
    seeds: Annotated[int | None, typer.Option(help="seeds per seed-dependent method [default: 3; --quick 1]")] = None,
    datasets: Annotated[str | None, typer.Option(
        help="comma-separated evaluation datasets [default: dd-honesty,truthfulqa; with --quick dd-honesty]")] = None,
    coeffs: Annotated[list[float] | None, typer.Option(help="coefficients (repeatable; default -1 0 1)")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="a first look in minutes: defaults become " + ", ".join(
        f"{k.replace('_', '-')} {v}" for k, v in QUICK.items()))] = False,
    root: Annotated[Path, typer.Option(help="results root (runs and cached fits)")] = Path("runs"),
    out: Annotated[Path, typer.Option(help="where Table 1, the bar chart and against-the-grain go")] = Path("results/compare"),
    eval_limit: Annotated[int | None, typer.Option(help="rows per dataset (whole dilemmas)")] = None,
    eval_part: Annotated[str, typer.Option(help="DailyDilemmas half: report | tune | all")] = "report",
    steps: Annotated[int | None, typer.Option(min=1, help="training steps of trained methods")] = None,
    n_pairs: Annotated[int | None, typer.Option(help="fit every method on this many contrastive pairs")] = None,
    samples: Annotated[int, typer.Option(help="questions with steered generations at c = -1, 0, +1")] = 0,
    pmass_min: Annotated[float, typer.Option(help="log-ratio is NaN where P(yes)+P(no) is below this")] = 0.1,
    kl: Annotated[str | None, typer.Option(help="comma-separated KL budgets (nats/token), e.g. 0.05,0.5: score each "
                                           "method at the per-sign c where KL(base || steered) on neutral prompts "
                                           "equals the budget, instead of at raw c; --coeffs are then budget units")] = None,
    kl_stat: Annotated[str, typer.Option(help="per-token KL statistic of the budget: mean | p95")] = "mean",
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "auto",
    ray: Annotated[bool, typer.Option("--ray", help="run on Ray (local, or $RAY_ADDRESS / --address)")] = False,
    address: Annotated[str | None, typer.Option(help="Ray cluster address")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace the tables in an existing OUT (runs stay cached in ROOT)")] = False,
) -> None:
    """Fit every method per seed on the same pairs, evaluate at the same coefficients, write Table 1."""
    from ..eval.calibrate import check_stat
    from ..eval.datasets import load_dataset
    from ..eval.gate import gate_warnings
    from ..io import atomic_dir
    from ..experiments.compare import compare_configs, run_compare
    from ..experiments.tables import table1_console

    cs = check_coeffs(coeffs, need_zero=True)
    check_out(out, overwrite)
    check_out(root, True, "--root")  # a file is never a results root
    check_stat(kl_stat)
    check_sources({model}, {concept})
    given = {"seeds": seeds, "eval_limit": eval_limit, "steps": steps, "n_pairs": n_pairs, "datasets": datasets}
    defaults = QUICK if quick else {"seeds": 3, "datasets": "dd-honesty,truthfulqa"}
    opt = {k: v if v is not None else defaults.get(k) for k, v in given.items()}  # explicit options always win
    for name in _split(opt["datasets"], "datasets"):
        load_dataset(name)  # an unknown name or a bad file fails here, before any run writes to ROOT
    cfgs = compare_configs(_split(methods, "methods"), opt["seeds"], model, concept, _split(opt["datasets"], "datasets"),
                           cs, opt["eval_limit"], eval_part, opt["steps"], samples, pmass_min,
                           opt["n_pairs"], parse_budgets(kl) if kl is not None else None, kl_stat, check_precision(precision))
    on_interrupt(_runs_note(cfgs, root))
    with atomic_dir(out) as tmp:
        res = run_compare(cfgs, root, tmp, use_ray=ray or bool(address or os.environ.get("RAY_ADDRESS")), address=address)
    cons = console()
    for ds, t in res.table1.items():  # the full table (every column) is in OUT's files; the console shows its core
        cons.print(_rich(table1_console(t), f"Table 1 · {ds} · {model} (all columns: {out}/table1_{ds}.md)"))
    cons.print("effect: side-balanced slope of the label-signed log-ratio on c (nats per unit c); 95% CI over seeds, or "
               "the run's own dilemma bootstrap for 1 seed. vs prompt / vs random: difference of the mean effects, no "
               "CI. ΔNLL: mean NLL increase at c = ±1.")
    for line in gate_warnings(model, list(dict.fromkeys(d for c in cfgs for d in c.datasets))):
        cons.print(f"[yellow]{line}[/yellow]")
    if res.against_the_grain is not None:
        cons.print(_rich(res.against_the_grain, "Against the grain: c = −1 vs the dishonest prompt"))
    else:
        cons.print(f"[yellow]no against-the-grain table: {res.against_the_grain_error}[/yellow]")
    if res.summary.failed:
        cons.print(res.summary.table())
    cons.print(f"tables and chart in {out}/, runs in {root}/runs/")
