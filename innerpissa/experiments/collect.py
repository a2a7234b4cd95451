"""Read a results root (`runs/<hash>/` dirs) into frames: one row per (run, dataset), failures, and per-row scores.

A run counts as complete only when its `DONE` marker exists; dirs with `error.json` are failed runs and
dirs with neither are partial (interrupted) runs. Only complete runs enter the tables. Other innerpissa outputs
found near them (an `innerpissa eval` run, a trained adapter) are not runs; `skipped_dirs` names them and why.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from .run import stored_run

KEY_COLUMNS = ["run_hash", "method", "seed", "preset", "model", "concept", "dataset"]


def runs_dir(root: Path) -> Path:
    """The directory holding `<hash>/` run dirs: `root/runs` if it exists, else `root` itself."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"results root {root} does not exist: pass the directory a sweep or compare wrote")
    return root / "runs" if (root / "runs").is_dir() else root


def _is_run_dir(d: Path) -> bool:
    """A sweep/compare run dir: `run_one` writes config.json with a `run` section first, error.json on failure. A
    config.json that does not parse counts as a damaged run (`collect` then names it and the fix)."""
    if (d / "error.json").is_file():
        return True
    try:
        config = json.loads((d / "config.json").read_text())
    except OSError:
        return False
    except ValueError:
        return True
    return isinstance(config, dict) and isinstance(config.get("run"), dict)


def _run_dirs(root: Path) -> list[Path]:
    return sorted(d for d in runs_dir(root).iterdir() if d.is_dir() and not d.name.startswith(".") and _is_run_dir(d))


SKIP_DEPTH = 3  # how deep below the root `skipped_dirs` looks (runs/eval/<adapter> is 2 deep)


def skipped_dirs(root: Path) -> pd.DataFrame:
    """innerpissa outputs under `root` (up to `SKIP_DEPTH` deep) that are not sweep/compare runs and so not in the
    report, with the reason: `innerpissa eval` outputs (their config.json names no sweep run) and trained adapters.
    The fit cache of a results root (`fits/`) and hidden dirs are internal. Columns: path (relative to root), reason."""
    root = Path(root)
    rows = []
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        depth = len(d.relative_to(root).parts)
        dirnames[:] = [n for n in sorted(dirnames) if not n.startswith(".") and depth < SKIP_DEPTH
                       and not (d == root and n == "fits" and (root / "runs").is_dir())]
        if d == root:
            continue
        if _is_run_dir(d):
            dirnames[:] = []
            continue
        if "steerer.json" in filenames:
            reason = "a trained adapter, not a scored run (`innerpissa eval --adapter` scores it)"
        elif "summary.json" in filenames:
            reason = ("an `innerpissa eval` output: the report compares sweep/compare runs (runs/<hash>/ with a DONE "
                      "marker); this run's numbers are in its own summary.json")
        else:
            continue
        rows.append({"path": d.relative_to(root).as_posix(), "reason": reason})
        dirnames[:] = []
    return pd.DataFrame(rows, columns=["path", "reason"])


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}): delete that run dir and rerun it") from e


def _run_fields(run: dict, run_hash: str, env: dict | None = None) -> dict:
    """Identity columns and flattened config (`cfg.*` for the run spec, `env.*` for the rest of config.json)."""
    run = stored_run(run)
    fields = {
        "run_hash": run_hash,
        "method": run.get("method"),
        "seed": run.get("seed"),
        "preset": run.get("preset"),
        "model": run.get("model"),
        "concept": run.get("concept"),
        "params_key": json.dumps(run.get("params") or {}, sort_keys=True),
    }
    flat = pd.json_normalize({"cfg": run, "env": env or {}}, sep=".")
    return {**fields, **flat.iloc[0].to_dict()}


def _config(run_dir: Path) -> tuple[dict, dict]:
    """(run spec, environment) from a run's config.json."""
    config = _read_json(run_dir / "config.json")
    run = config.get("run") if isinstance(config, dict) else None
    if not isinstance(run, dict) or "method" not in run:
        raise ValueError(f"{run_dir / 'config.json'} has no 'run' section with a 'method': not a run directory")
    return run, {k: v for k, v in config.items() if k != "run"}


def collect(root: Path) -> pd.DataFrame:
    """One row per (complete run, dataset): identity columns, every `summary.json` key, the positive control
    (`control.json` as `control_<key>`, NaN for runs made before it existed) and flattened config."""
    rows = []
    for d in _run_dirs(root):
        if not (d / "DONE").exists():
            continue
        run, env = _config(d)
        fields = _run_fields(run, d.name, env)
        if (d / "control.json").is_file():
            fields.update({f"control_{k}": v for k, v in _read_json(d / "control.json").items()})
        summary = _read_json(d / "summary.json")
        for dataset, metrics in summary.items():
            rows.append({**fields, "dataset": dataset, **metrics})
    if not rows:
        raise ValueError(
            f"no complete runs under {runs_dir(root)} (a run is complete when its dir has a DONE marker): "
            "run `innerpissa sweep` or `innerpissa compare` first"
        )
    return pd.DataFrame(rows)


def collect_failed(root: Path) -> pd.DataFrame:
    """Runs that did not complete: status 'failed' (error.json: its type and message) or 'partial' (no DONE)."""
    rows = []
    for d in _run_dirs(root):
        if (d / "DONE").exists():
            continue
        err = _read_json(d / "error.json") if (d / "error.json").is_file() else None
        run = _config(d)[0] if (d / "config.json").is_file() else (err or {}).get("run") or {}
        fields = {k: v for k, v in _run_fields(run, d.name).items() if k in KEY_COLUMNS}
        if err is not None:
            msg = f"{err.get('type', 'Error')}: {err.get('message', '')}".strip().splitlines()[0]
            rows.append({**fields, "status": "failed", "error": msg})
        else:
            rows.append({**fields, "status": "partial", "error": ""})
    return pd.DataFrame(rows, columns=["run_hash", "method", "seed", "preset", "model", "concept", "status", "error"])


def load_scores(root: Path, run_hashes: list[str] | None = None) -> pd.DataFrame:
    """Concatenate `scores.parquet` of complete runs (optionally only `run_hashes`), adding a `run_hash` column."""
    wanted = None if run_hashes is None else set(run_hashes)
    paths = [d / "scores.parquet" for d in _run_dirs(root)
             if (d / "DONE").exists() and (wanted is None or d.name in wanted) and (d / "scores.parquet").is_file()]
    frames = [pd.read_parquet(p).assign(run_hash=p.parent.name)
              for p in tqdm(paths, desc="read scores", unit="run", disable=len(paths) < 20)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def load_samples(root: Path, run_hashes: list[str]) -> pd.DataFrame:
    """Steered generations (`samples.json`: prompt, coeff, completion) of the given runs, with a `run_hash` column."""
    rows = []
    for h in run_hashes:
        path = runs_dir(root) / h / "samples.json"
        if path.is_file():
            rows += [{**s, "run_hash": h} for s in _read_json(path)]
    return pd.DataFrame(rows, columns=["run_hash", "prompt", "coeff", "completion"])


def kl_budget(collected: pd.DataFrame) -> pd.Series:
    """Each collected run's KL budget (NaN for raw-coefficient runs, including runs made before calibration)."""
    return pd.to_numeric(collected.get("cfg.kl", pd.Series(index=collected.index, dtype=float)), errors="coerce")
