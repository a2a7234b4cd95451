"""Sweeps: a YAML spec expands into `RunConfig`s, run in-process (default) or as Ray tasks, resumable.

Spec (every top-level key except the four below is a `RunConfig` field, the base of every run):

    model: smollm2-135m
    method: innerpissa
    eval_limit: 120
    params: {train: {steps: 40}}
    grid:                      # cartesian product; keys are RunConfig fields or dotted paths "params.a.b"
      params.adapter.r: [16, 64]
      params.train.lr: [0.002, 0.005]
    lists:                     # explicit variants, one run family each (overrides, same key syntax)
      - {method: innerpissa}
      - {method: lora, params.r: 8}
    seeds: [0, 1, 2]
    presets: [full, no_rotate_v, depth_0.5]   # ablation presets (see ablations.py); default: none

Runs = lists × grid × presets × seeds, de-duplicated by content hash; a deterministic method (one whose class has
no `seed_param`) keeps only its first seed, since its seeds would be identical runs.

Executors: `run_inprocess` (sequential, one model in memory, reused across runs) and `run_ray` (each run a Ray
task with declared CPUs/GPUs; starts a local Ray unless an address or $RAY_ADDRESS is given). Ray workers write
straight into ROOT, so on a multi-node cluster ROOT must be on a filesystem every node mounts at the same path
(NFS, a cloud volume) and innerpissa must be installed on every node. Both skip complete runs (DONE), redo
partial or failed ones, record a failure in the run's error.json and carry on, and return a `SweepSummary`.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from .. import steerers
from ..config import set_path, validation_message
from ..io import atomic_write_json, read_yaml
from .ablations import apply_preset
from .run import RunConfig, is_done, run_one

SPEC_KEYS = ("grid", "lists", "seeds", "presets")


class SweepSpec(BaseModel):
    """A parsed sweep spec: base RunConfig fields plus grid / lists / seeds / presets."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    lists: list[dict[str, Any]] = Field(default_factory=list)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    presets: list[str | None] = Field(default_factory=lambda: [None], min_length=1)


def load_spec(path: Path) -> SweepSpec:
    """Read a sweep YAML; unknown keys and malformed sections raise a one-line ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep spec {path} not found; pass a YAML file (see sweeps/ for examples)")
    raw = read_yaml(path)
    if raw is None:
        raise ValueError(f"sweep spec {path} is empty; give at least `method:` (see sweeps/ for examples)")
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a sweep spec must be a mapping of RunConfig fields plus {', '.join(SPEC_KEYS)}")
    base = {k: v for k, v in raw.items() if k not in SPEC_KEYS}
    unknown = sorted(set(base) - set(RunConfig.model_fields) | ({"seed", "preset"} & set(base)))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; use RunConfig fields "
                         f"({', '.join(f for f in RunConfig.model_fields if f not in ('seed', 'preset'))}) "
                         f"plus {', '.join(SPEC_KEYS)}")
    try:
        return SweepSpec(base=base, **{k: raw[k] for k in SPEC_KEYS if k in raw})
    except ValidationError as e:
        raise ValueError(f"{path}: {validation_message(e)}") from None


def make_config(fields: dict[str, Any]) -> RunConfig:
    """RunConfig from a field dict, with a one-line error instead of pydantic's multi-line report."""
    try:
        return RunConfig(**fields)
    except ValidationError as e:
        raise ValueError(f"invalid run config ({validation_message(e)})") from None


def _override(fields: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    top, _, rest = key.partition(".")
    if top not in RunConfig.model_fields or top in ("seed", "preset") or (rest and top != "params"):
        raise ValueError(f"unknown sweep key {key!r}: use a RunConfig field or a dotted path params.<...>")
    if not rest:
        return {**fields, key: value}
    return {**fields, "params": set_path(fields.get("params", {}), rest, value)}


def expand(spec: SweepSpec) -> list[RunConfig]:
    """All runs of the spec (lists × grid × presets × seeds), de-duplicated by content hash, in a stable order."""
    if empty := [k for k, v in spec.grid.items() if not v]:
        raise ValueError(f"grid key(s) {empty} have no values: give each at least one")
    keys = list(spec.grid)
    points = [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*(spec.grid[k] for k in keys))]
    out: dict[str, RunConfig] = {}
    for variant in spec.lists or [{}]:
        for point in points:
            fields = dict(spec.base)
            for k, v in [*variant.items(), *point.items()]:
                fields = _override(fields, k, v)
            for preset in spec.presets:
                cfg = apply_preset(make_config(fields), preset)
                seeds = spec.seeds if cfg.seeded() else spec.seeds[:1]
                for seed in seeds:
                    run = cfg.model_copy(update={"seed": seed})
                    out.setdefault(run.content_hash(), run)
    return list(out.values())


def check_methods(cfgs: Iterable[RunConfig]) -> None:
    """Fail before running anything if a run names a method that is not installed."""
    known = steerers.available()
    unknown = sorted({c.method for c in cfgs} - set(known))
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(known)}")


@dataclass
class SweepSummary:
    """Outcome of a sweep: run hashes done now, skipped (already complete) and failed (hash -> error)."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    configs: dict[str, RunConfig] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"done": self.done, "skipped": self.skipped, "failed": self.failed}

    def table(self) -> Table:
        """A rich table: one line per run with its status and, for failures, the error."""
        t = Table(title=f"sweep: {len(self.done)} done, {len(self.skipped)} skipped, {len(self.failed)} failed")
        for col in ("run", "method", "preset", "seed", "status", "error"):
            t.add_column(col)
        status = {h: "done" for h in self.done} | {h: "skipped" for h in self.skipped} | {h: "failed" for h in self.failed}
        for h, cfg in self.configs.items():
            st = status.get(h, "not run")
            t.add_row(h, cfg.method, str(cfg.preset or "-"), str(cfg.seed),
                      f"[red]{st}[/red]" if st == "failed" else st, self.failed.get(h, ""))
        return t


Callback = Callable[[RunConfig, Path], None]


def _start(cfgs: Iterable[RunConfig], root: Path) -> tuple[SweepSummary, list[RunConfig]]:
    cfgs = list(cfgs)
    summary = SweepSummary(configs={c.content_hash(): c for c in cfgs})
    todo = []
    for c in cfgs:
        if is_done(c, root):
            summary.skipped.append(c.content_hash())
        else:
            todo.append(c)
    return summary, todo


def _record_done(summary: SweepSummary, cfg: RunConfig, path: Path, on_done: Callback | None) -> None:
    summary.done.append(cfg.content_hash())
    if on_done is not None:
        try:  # logging (W&B) must never fail a finished run
            on_done(cfg, path)
        except Exception as e:
            Console(stderr=True).print(f"[yellow]warning: logging run {path.name} failed: {e}[/yellow]")


def _finish(summary: SweepSummary, root: Path) -> SweepSummary:
    atomic_write_json(Path(root) / "sweep_summary.json", summary.to_json())
    return summary


def _name(cfg: RunConfig) -> str:
    """A run as a person names it: method (with its recipe or variant), preset, seed, KL budget."""
    variant = (cfg.params or {}).get("recipe") or (cfg.params or {}).get("variant")
    return (f"{cfg.method}{':' + str(variant) if variant else ''}{' ' + cfg.preset if cfg.preset else ''} seed {cfg.seed}"
            f"{f' at KL {cfg.kl:g}' if cfg.kl else ''}")


def _announce(progress: Progress, summary: SweepSummary, todo: list[RunConfig]) -> None:
    """One line before the first run: how many runs there are and how many finished ones are skipped."""
    skipped = f" ({len(summary.skipped)} finished earlier, skipped)" if summary.skipped else ""
    progress.console.print(f"{len(todo)} run(s) to do{skipped}")


def run_inprocess(cfgs: Iterable[RunConfig], root: Path, on_done: Callback | None = None) -> SweepSummary:
    """Run sequentially in this process; runs are grouped by model so each model loads once. Each run starts with a
    line `run i of N: method [preset] seed s`, so a log (not only a terminal's progress bar) shows how far it is."""
    summary, todo = _start(cfgs, root)
    todo.sort(key=lambda c: c.model)  # stable: keeps spec order within a model
    with Progress(console=Console(stderr=True)) as progress:
        _announce(progress, summary, todo)
        bar = progress.add_task("sweep", total=len(todo))
        for i, cfg in enumerate(todo, 1):
            progress.console.print(f"run {i} of {len(todo)}: {_name(cfg)}")
            progress.update(bar, description=_name(cfg))
            try:
                path = run_one(cfg, root)
            except Exception as e:  # recorded in the run's error.json by run_one
                summary.failed[cfg.content_hash()] = f"{type(e).__name__}: {e}".splitlines()[0]
            else:
                _record_done(summary, cfg, path, on_done)
            progress.advance(bar)
    return _finish(summary, root)


def _ray_task(cfg_json: dict[str, Any], root: str) -> str:
    return str(run_one(RunConfig(**cfg_json), Path(root)))


def run_ray(cfgs: Iterable[RunConfig], root: Path, address: str | None = None, num_cpus_per_run: float = 1.0,
            num_gpus_per_run: float = 0.0, num_cpus: int | None = None, on_done: Callback | None = None) -> SweepSummary:
    """Run each pending run as a Ray task; attach to `address`/$RAY_ADDRESS, else start (and stop) a local Ray."""
    import ray

    summary, todo = _start(cfgs, root)
    root = Path(root).resolve()
    address = address or os.environ.get("RAY_ADDRESS")
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    try:
        task = ray.remote(num_cpus=num_cpus_per_run, num_gpus=num_gpus_per_run, max_retries=0)(_ray_task)
        pending = {task.remote(c.model_dump(mode="json"), str(root)): c for c in todo}
        with Progress(console=Console(stderr=True)) as progress:
            _announce(progress, summary, todo)
            bar = progress.add_task(f"ray sweep ({len(todo)} runs)", total=len(todo))
            while pending:
                [ref], _ = ray.wait(list(pending), num_returns=1)
                cfg = pending.pop(ref)
                progress.console.print(f"run {len(todo) - len(pending)} of {len(todo)} ended: {_name(cfg)}")
                try:
                    path = Path(ray.get(ref))
                except Exception as e:  # RayTaskError wraps the run's exception; error.json has the traceback
                    cause = getattr(e, "cause", None) or e
                    summary.failed[cfg.content_hash()] = f"{type(cause).__name__}: {cause}".splitlines()[0]
                else:
                    _record_done(summary, cfg, path, on_done)
                progress.advance(bar)
    finally:
        if started:
            ray.shutdown()
    return _finish(summary, root)


def wandb_logger(root: Path, project: str = "innerpissa") -> Callback:
    """A callback logging each finished run's config and summary to W&B (offline unless an API key is set)."""
    try:
        import wandb
    except ImportError:
        raise ValueError("--wandb needs the wandb package: pip install 'innerpissa[wandb]'") from None
    mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")

    def log(cfg: RunConfig, path: Path) -> None:
        summary = json.loads((path / "summary.json").read_text())
        run = wandb.init(project=project, name=path.name, config=cfg.model_dump(mode="json"), mode=mode,
                         dir=str(root), reinit="create_new")
        run.log({f"{ds}/{k}": v for ds, s in summary.items() if isinstance(s, dict)
                 for k, v in s.items() if isinstance(v, (int, float))})
        run.finish()

    return log
