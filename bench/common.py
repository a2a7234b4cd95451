"""Shared bench helpers: machine info and JSON output (benchmarks are separate from tests)."""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import platform
import subprocess
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from innerpissa.io import atomic_write_json

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    """Where the numbers came from."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = ""
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git_commit": commit,
    }


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Wall times (s) of `repeats` calls after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def summary(times: list[float]) -> dict:
    return {"median_s": float(np.median(times)), "times_s": [round(t, 4) for t in times]}


def write(name: str, payload: dict) -> Path:
    path = RESULTS / f"{name}.json"
    atomic_write_json(path, {"machine": machine(), **payload})
    return path


@contextlib.contextmanager
def heavy_lock(path: str = "/tmp/innerpissa-heavy.lock") -> Iterator[None]:
    """Hold an exclusive flock on `path` (shared with other heavy jobs on this machine) for the block."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_units(cfgs: Sequence, root: Path, max_hours: float | None = None,
              after_each: Callable[[list[dict]], None] | None = None, lock: bool = True) -> list[dict]:
    """Run the not-yet-done runs of `cfgs` in their (priority) order, one heavy job at a time (`lock`: the machine's
    heavy-job flock; off for a tiny-model smoke run), stopping after `max_hours`; a failed run is recorded and the
    bench goes on. `after_each(failed)` lets the caller rewrite its
    JSON after every run, so a stopped bench already answers what it has measured. Returns the failures."""
    from innerpissa.experiments.run import run_dir, run_one

    t0, failed = time.perf_counter(), []
    for i, cfg in enumerate(cfgs):
        if (run_dir(cfg, root) / "DONE").is_file():
            continue
        if max_hours and time.perf_counter() - t0 > max_hours * 3600:
            print("time budget reached: stopping (rerun to continue)", flush=True)
            break
        print(f"[{i + 1}/{len(cfgs)}] {cfg.method} {cfg.params} seed {cfg.seed} kl {cfg.kl}", flush=True)
        t = time.perf_counter()
        try:
            with heavy_lock() if lock else contextlib.nullcontext():  # per run, so other heavy jobs interleave
                run_one(cfg, root)
        except Exception as e:  # recorded in the run's error.json too
            failed.append({"run": cfg.model_dump(mode="json"), "error": f"{type(e).__name__}: {e}"})
            traceback.print_exc()
        print(f"    {time.perf_counter() - t:.0f} s", flush=True)
        if after_each is not None:
            after_each(failed)
    return failed
