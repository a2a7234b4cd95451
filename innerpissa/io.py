"""Atomic file writes (temp file in the target directory, then rename: nothing is half-written) and reads of
JSON / YAML / safetensors whose errors name the file."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


class BadFileError(ValueError):
    """An input file is empty, truncated or malformed; the message names the file and the fix."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def atomic_write(path: Path, writer: Callable[[str], None]) -> None:
    """Call `writer(tmp_path)` then rename tmp onto `path`; on error the temp file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode a plain open() would
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Yield a temp dir beside `out` to fill; on success it replaces `out` (usual modes, not mkdtemp's 0700),
    on error it is removed together with any parent dirs made for it, so nothing is half-written."""
    out = Path(out)
    made = [p for p in reversed(out.parents) if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        yield tmp
        for p in [tmp, *tmp.rglob("*")]:
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~_UMASK)
        if out.exists():
            old = tmp.with_suffix(".old")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for p in reversed(made):
            with contextlib.suppress(OSError):
                p.rmdir()
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write text atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write JSON (indented, sorted keys) atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def json_safe(obj: Any) -> Any:
    """`obj` made writable as strict JSON: NaN/inf -> null, numpy scalars -> Python, tuples -> lists (recursively)."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, torch.Tensor):
        obj = obj.item()
    return None if isinstance(obj, float) and not math.isfinite(obj) else obj


def check_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    """Raise ValueError naming the tensors of `what` that hold NaN/inf, so no non-finite weights reach disk."""
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise ValueError(f"refusing to write {what}: {len(bad)} tensor(s) hold NaN/inf ({shown}); "
                         "use a smaller coefficient or retrain")


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically (tensors moved to CPU, made contiguous); refuses NaN/inf values."""
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    check_finite(clean, str(path))
    atomic_write(path, lambda tmp: save_file(clean, tmp, metadata=metadata))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a missing, empty or truncated file raises BadFileError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; pass a directory written by innerpissa")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise BadFileError(f"{path} is empty, truncated or not a safetensors file ({e}); "
                           "rewrite it (retrain or copy it again)") from None


def read_json(path: Path) -> Any:
    """Parse a JSON file; invalid or empty JSON raises BadFileError naming the file and line."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f"line {e.lineno}: {e.msg}" if isinstance(e, json.JSONDecodeError) else str(e)
        raise BadFileError(f"{path} is not valid JSON ({'empty file' if not path.stat().st_size else where}); "
                           "fix or rewrite it") from None


def read_yaml(path: Path) -> Any:
    """Parse a YAML file (safe_load); a syntax error raises BadFileError naming the file and line."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise BadFileError(f"{path}: YAML syntax error{where} ({problem}); fix the file") from None
