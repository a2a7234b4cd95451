"""Paste the benches' current tables into README.md between their markers, so the README shows exactly what the
benches aggregated, never a hand-copied number: Table 1 (`results/quality/*.md`, `bench/quality.py`) between
`<!-- quality-tables -->` markers, the prompting gate (`results/qualify/qualify.md`, `bench/qualify.py`) between
`<!-- qualify-table -->` markers."""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from innerpissa.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- quality-tables -->", "<!-- /quality-tables -->"
GATE = ("<!-- qualify-table -->", "<!-- /qualify-table -->")
TESTBED = ("<!-- testbed-tables -->", "<!-- /testbed-tables -->")  # the comparison on Qwen2.5-Coder-1.5B
TESTBED_MODEL = "qwen2.5-coder-1.5b"
CAPTIONS = {"dd-honesty": "dd-honesty reporting half", "truthfulqa-sample-400": "TruthfulQA (400 questions × 2 orders)",
            "truthfulqa-sample-200": "TruthfulQA (200 questions × 2 orders)"}


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
    blocks = {(START, END): render(args.json, args.tables), GATE: (ROOT / "results/qualify/qualify.md").read_text().strip(),
              TESTBED: render(ROOT / f"bench/results/quality_{TESTBED_MODEL}.json", ROOT / f"results/quality_{TESTBED_MODEL}")}
    for (start, end), body in blocks.items():
        if text.count(start) != 1 or text.count(end) != 1:
            print(f"error: {args.readme} needs exactly one {start} and one {end} marker; add them where the tables go",
                  file=sys.stderr)
            sys.exit(2)
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: f"{start}\n{body}\n{end}", text, flags=re.S)
    atomic_write_text(args.readme, text)


if __name__ == "__main__":
    main()
