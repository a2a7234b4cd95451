"""Paste Table 1's current tables (`results/quality/*.md`, written by `bench/quality.py`) into README.md between the
`<!-- quality-tables -->` markers, so the README shows exactly what the bench aggregated, never a hand-copied number."""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from innerpissa.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- quality-tables -->", "<!-- /quality-tables -->"
CAPTIONS = {"dd-honesty": "dd-honesty reporting half", "truthfulqa-sample-400": "TruthfulQA (400 questions × 2 orders)"}


def render(quality_json: Path, tables_dir: Path) -> str:
    """The markdown between the markers: a status line, then one captioned table per dataset × budget."""
    q = json.loads(quality_json.read_text())
    parts = [f"Tables from `{quality_json.relative_to(ROOT)}`: {q['n_runs_done']} of {q['n_runs_planned']} runs."]
    for kl in q["kl_budgets"]:
        for ds in q["tables"]:
            path = tables_dir / f"powered_{ds}_kl{kl}.md"
            parts.append(f"{CAPTIONS.get(ds, ds)}, KL {kl}:\n\n{path.read_text().strip()}")
    return "\n\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    ap.add_argument("--json", type=Path, default=ROOT / "bench/results/quality.json")
    ap.add_argument("--tables", type=Path, default=ROOT / "results/quality")
    args = ap.parse_args()
    text = args.readme.read_text()
    if text.count(START) != 1 or text.count(END) != 1:
        print(f"error: {args.readme} needs exactly one {START} and one {END} marker; add them where the tables go",
              file=sys.stderr)
        sys.exit(2)
    block = f"{START}\n{render(args.json, args.tables)}\n{END}"
    atomic_write_text(args.readme, re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S))


if __name__ == "__main__":
    main()
