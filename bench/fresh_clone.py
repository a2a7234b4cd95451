"""Time the README's two commands as a newcomer runs them: clone the current commit into a new folder (no .venv),
then `bash scripts/test.sh` and `bash scripts/main.sh`, each timed end to end (venv creation included).

  python bench/fresh_clone.py  -> bench/results/fresh_clone.json (the README's first lines quote it)
  python bench/fresh_clone.py --cli  -> also every line of the README's CLI block, as printed, after main.sh made
                                      the venv ("cli" in the same JSON)

What the numbers depend on is recorded with them: the CPU and its bf16 flags, the load average when each command
started (another job on the machine slows both), and whether the default model was already converted in the user
cache (its first conversion downloads a 98 MB wheel).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import write  # noqa: E402

from innerpissa.models import builtin, cache_dir  # noqa: E402
from innerpissa.precision import cpu_record  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {"test": "bash scripts/test.sh", "main": "bash scripts/main.sh"}


def run(cmd: str, cwd: Path, log: Path) -> dict:
    """One command's wall time, exit code, load average at its start, and the last line pytest or compare printed."""
    load = os.getloadavg()[0]
    t = time.perf_counter()
    with log.open("w") as f:
        rc = subprocess.run(cmd, shell=True, cwd=cwd, stdout=f, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t
    lines = [l for l in log.read_text(errors="replace").splitlines() if l.strip()]
    passed = next((l for l in reversed(lines) if re.search(r"\d+ passed", l)), None)
    return {"command": cmd, "rc": rc, "wall_s": round(wall, 1), "load_avg_1min_at_start": round(load, 2),
            "pytest_summary": passed.strip("= ") if passed else None, "log_tail": lines[-5:]}


def readme_cli_lines(readme: Path) -> list[str]:
    """The commands of the README's CLI block (the first ```bash block after '## CLI'), comments stripped."""
    text = readme.read_text()
    block = text[text.index("```bash", text.index("\n## CLI")) + len("```bash"):]
    block = block[:block.index("```")]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", action="store_true", help="also run the README's CLI block line by line")
    args = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    model = builtin("smollm2-135m")
    converted = model is not None and (cache_dir() / model.cache_name).is_dir()
    with tempfile.TemporaryDirectory(prefix="innerpissa-fresh-") as tmp:
        clone = Path(tmp) / "innerpissa"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        subprocess.run(["git", "checkout", "-q", commit], cwd=clone, check=True)
        results, cli = {}, []
        for name, cmd in COMMANDS.items():
            print(f"{name}: {cmd} (in {clone}) ...", flush=True)
            results[name] = run(cmd, clone, Path(tmp) / f"{name}.log")
            print(f"  rc {results[name]['rc']}, {results[name]['wall_s']:.0f} s", flush=True)
        if args.cli:
            venv = f"PATH={clone / '.venv' / 'bin'}:$PATH "
            for i, line in enumerate(readme_cli_lines(clone / "README.md")):
                print(f"cli {i}: {line} ...", flush=True)
                cli.append(run(venv + line, clone, Path(tmp) / f"cli{i}.log") | {"command": line})
                print(f"  rc {cli[-1]['rc']}, {cli[-1]['wall_s']:.0f} s", flush=True)
    payload = {"commit": commit[:7], "cpu": cpu_record(), "model_already_converted": converted, "commands": results}
    if args.cli:
        payload["cli"] = cli
    out = write("fresh_clone", payload)
    print(f"wrote {out}")
    if any(r["rc"] for r in [*results.values(), *cli]):
        sys.exit(1)


if __name__ == "__main__":
    main()
