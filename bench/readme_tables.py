"""Paste the benches' current tables and the sentences built from them into README.md and docs/results.md, between
their `<!-- name -->` / `<!-- /name -->` markers, so those pages show exactly what the committed JSONs hold, never
a hand-copied number.

README.md: `fresh-clone` (bench/fresh_clone.py), `testbed-headline` (the 1.5B comparison on dd-honesty) and
`verdict` (its one-paragraph reading). docs/results.md: `qualify-table` (bench/qualify.py), `testbed-tables` (every
table of the 1.5B comparison), `quality-tables` (Table 1 on SmolLM2-135M, bench/quality.py) and `null-anatomy`
(bench/null_anatomy.py).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from innerpissa.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
TESTBED_MODEL = "qwen2.5-coder-1.5b"
CAPTIONS = {"dd-honesty": "dd-honesty reporting half", "truthfulqa-sample-400": "TruthfulQA (400 questions × 2 orders)",
            "truthfulqa-sample-200": "TruthfulQA (200 questions × 2 orders)"}
FULL_NULL, FULL_SEEDS = 5, 3  # the test-bed issue's minimum null and InnerPiSSA seeds: fewer is a first look


def status(q: dict, path: Path) -> str:
    """'Tables from <json> (<date>, commit <c>): n of m runs.'"""
    m = q.get("machine", {})
    return (f"Tables from `{path.relative_to(ROOT)}` ({m.get('date', '?')[:10]}, commit {m.get('git_commit', '?')}): "
            f"{q['n_runs_done']} of {q['n_runs_planned']} runs.")


def render(quality_json: Path, tables_dir: Path, only: str | None = None) -> str:
    """A status line, then one captioned table per dataset × budget (`only`: one dataset)."""
    q = json.loads(quality_json.read_text())
    parts = [status(q, quality_json)]
    for kl in q["kl_budgets"]:
        for ds in q["tables"]:
            if only is None or ds == only:
                path = tables_dir / f"powered_{ds}_kl{kl}.md"
                parts.append(f"{CAPTIONS.get(ds, ds)}, KL {kl}:\n\n{path.read_text().strip()}")
    return "\n\n".join(parts)


NAMES = {  # how the verdict spells the methods
    "prompt": "the prompt", "mean_diff": "CAA", "pca": "PCA", "bipo": "BiPO", "lora": "LoRA", "dora": "DoRA", "pissa": "PiSSA", "dpo": "DPO",
}


def ci(x: float, lo: float, hi: float) -> str:
    return f"{x:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def verdict(quality_json: Path, dataset: str = "dd-honesty") -> str:
    """The comparison's reading on `dataset`, built from its JSON: InnerPiSSA against the prompt (paired) and
    against the random null, and whether the runs needed for a verdict are in."""
    q = json.loads(quality_json.read_text())
    ((kl, rows),) = q["tables"][dataset].items()
    by = {r["method"]: r for r in rows}
    ip, pr = by.get("innerpissa"), by.get("prompt")
    if ip is None or pr is None:
        return f"No verdict: InnerPiSSA or the prompt has no finished run yet ({q['n_runs_done']} of {q['n_runs_planned']} runs)."
    rivals = [m for m in ("prompt", "mean_diff") if m in by]  # the two the verdict always reads
    paired = "; ".join(versus(NAMES[m], by[m]["paired_vs_innerpissa"]) for m in rivals)
    null = ip["vs_random_null"]
    if null["null_n"] >= 3:
        vs_null = (f"InnerPiSSA is {null['verdict']} the random null's 95 % prediction interval ({null['null_lo']:+.3f} … "
                   f"{null['null_hi']:+.3f}, {null['null_n']} random directions at the same KL)")
        pn = pr["vs_random_null"]
        vs_null += f"; the prompt is {pn['verdict']} it."
    else:
        vs_null = f"The random null has {null['null_n']} of its {FULL_NULL} seeds: no band yet."
    seeds = ip["n_seeds"]
    final = null["null_n"] >= FULL_NULL and seeds >= FULL_SEEDS
    head = "**Verdict" if final else f"**First look, not the verdict ({seeds} of {FULL_SEEDS} InnerPiSSA seeds, {null['null_n']} of {FULL_NULL} random seeds)"
    beats = [NAMES[m] for m in rivals if by[m]["paired_vs_innerpissa"]["ci_high"] < 0]
    plain = (f"In one line: InnerPiSSA {'beats ' + ' and '.join(beats) if beats else 'beats neither the prompt nor CAA'}"
             f" here, and it {'clears' if null['verdict'] == 'above' else 'does not clear'} the random null."
             if final else "")
    others = "".join(
        f" {versus(NAMES.get(m, m), r['paired_vs_innerpissa'])}; {NAMES.get(m, m)} is {r['vs_random_null']['verdict']} the random null, action "
        f"bias {r['action_bias']:+.3f}." for m, r in by.items()
        if m not in ("innerpissa", "random", *rivals) and r.get("paired_vs_innerpissa")
        and (r["paired_vs_innerpissa"]["ci_low"] > 0 or r["paired_vs_innerpissa"]["ci_high"] < 0))
    return (f"{head}, KL {kl}, {q['n_dilemmas'][dataset]} dilemmas:** {plain} "
            f"InnerPiSSA moves dd-honesty by {ci(ip['effect'], ip['ci_low'], ip['ci_high'])} nats per unit c "
            f"against the prompt's {ci(pr['effect'], pr['ci_low'], pr['ci_high'])}; {paired}.{others} {vs_null} "
            f"{controls(ip, q.get('control_null', {}).get(kl))} InnerPiSSA's action bias (keenness to act, which the "
            f"side-balanced effect does not count) is {ip['action_bias']:+.3f}, the prompt's {pr['action_bias']:+.3f}.")


def versus(name: str, d: dict) -> str:
    """'<name> − InnerPiSSA, paired: d [lo, hi]' and what it means."""
    word = "InnerPiSSA loses" if d["ci_low"] > 0 else "InnerPiSSA wins" if d["ci_high"] < 0 else "no difference"
    return f"{name} − InnerPiSSA, paired, {ci(d['diff'], d['ci_low'], d['ci_high'])}: {word}"


def controls(row: dict, band: dict | None) -> str:
    """Whether the method's two positive controls clear the random directions' bands on this model."""
    pc = row["positive_control"]
    if not band or band["r"]["null_n"] < 3:
        return f"Its positive controls (token r {pc['r']:.2f}, probe {pc['probe']:.2f}) await a random band."
    parts = [f"{name} {pc[k]:.2f} {'passes' if pc[k] > band[k]['null_hi'] else 'fails'} (random band ≤ {band[k]['null_hi']:.2f})"
             for k, name in (("r", "token r"), ("probe", "probe"))]
    return f"Its positive controls ({band['r']['null_n']} random directions): " + ", ".join(parts) + "."


def fresh_clone(path: Path) -> str:
    """The README's first lines: how long the two commands took from a fresh clone, and on what."""
    if not path.is_file():
        return "Not timed yet: `python bench/fresh_clone.py` times both from a fresh clone."
    f = json.loads(path.read_text())
    cpu = f["cpu"]
    flags = "+".join(cpu.get("bf16_flags") or []) or "no bf16 flags"
    parts = []
    for name, r in f["commands"].items():
        m, s = divmod(round(r["wall_s"]), 60)
        extra = f", {r['pytest_summary']}" if name == "test" and r.get("pytest_summary") else ""
        parts.append(f"`scripts/{name}.sh` {m} min {s:02d} s (exit {r['rc']}{extra}, load {r['load_avg_1min_at_start']:.1f} at start)")
    if f.get("cli"):
        ok, wall = sum(r["rc"] == 0 for r in f["cli"]), sum(r["wall_s"] for r in f["cli"])
        parts.append(f"then the CLI block below, as printed: {ok} of {len(f['cli'])} lines exit 0, "
                     f"{wall / 60:.0f} min in all")
    conv = "already converted" if f["model_already_converted"] else "downloaded and converted in the run"
    # the first command's load: each later one starts inside the trailing 1-min average of the one before
    busy = f["commands"]["test"]["load_avg_1min_at_start"] > 0.5
    note = " Another job shared the 2 cores (the load averages), so these are upper bounds." if busy else ""
    return (f"From a fresh clone with a new venv ({f['machine']['date'][:10]}, commit {f['commit']}, "
            f"{cpu.get('model')} ({flags}), {f['machine']['cpu_count']} cores; default model {conv}): "
            + "; ".join(parts) + f".{note} Source: `bench/results/fresh_clone.json`.")


def null_anatomy(path: Path) -> str:
    """docs/results.md: each run's side-balanced effect split into its two strata (bench/null_anatomy.py)."""
    if not path.is_file():
        return "Not computed yet: `python bench/null_anatomy.py`."
    f = json.loads(path.read_text())
    sides = sorted(k for k in f["runs"][0] if k.startswith("slope_"))
    n = f["strata_sizes"]
    head = [f"honest = {k[6:].replace('_', ' ')} ({n.get(k[6:], 0)} dilemmas)" for k in sides]
    lines = [f"`bench/results/null_anatomy.json` ({f['machine']['date'][:10]}, commit {f['machine']['git_commit']}): "
             f"{f['model']}, {f['dataset']} reporting half, KL {f['kl']}, slopes in nats per unit c.", "",
             "| run | " + " | ".join(head) + " | effect (their mean) | per-dilemma pattern vs the prompt's (r) |",
             "|---|" + "---|" * (len(sides) + 2)]
    for r in sorted(f["runs"], key=lambda r: (r["run"].startswith("random"), r["run"])):
        lines.append(f"| {r['run']} | " + " | ".join(f"{r[k]:+.3f}" for k in sides)
                     + f" | {r['effect']:+.3f} | {r['pattern_corr_with_prompt']:+.2f} |")
    sd = f["random_sd"]
    lines.append(f"| SD of the {f['n_random']} random directions | " + " | ".join(f"{sd[k]:.3f}" for k in sides)
                 + f" | {sd['effect']:.3f} | {sd['pattern_corr_with_prompt']:.2f} |")
    return "\n".join(lines)


def paste(path: Path, blocks: dict[str, str]) -> None:
    """Replace each `<!-- name -->…<!-- /name -->` block of `path` with its new body; one-line error if a marker is missing."""
    text = path.read_text()
    for name, body in blocks.items():
        start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
        if text.count(start) != 1 or text.count(end) != 1:
            print(f"error: {path} needs exactly one {start} and one {end} marker; add them where the text goes",
                  file=sys.stderr)
            sys.exit(2)
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: f"{start}\n{body}\n{end}", text, flags=re.S)
    atomic_write_text(path, text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    ap.add_argument("--results", type=Path, default=ROOT / "docs" / "results.md")
    args = ap.parse_args()
    testbed_json = ROOT / f"bench/results/quality_{TESTBED_MODEL}.json"
    testbed_tables = ROOT / f"results/quality_{TESTBED_MODEL}"
    paste(args.readme, {
        "fresh-clone": fresh_clone(ROOT / "bench/results/fresh_clone.json"),
        "testbed-headline": render(testbed_json, testbed_tables, only="dd-honesty"),
        "verdict": verdict(testbed_json),
    })
    paste(args.results, {
        "qualify-table": (ROOT / "results/qualify/qualify.md").read_text().strip(),
        "testbed-tables": render(testbed_json, testbed_tables),
        "quality-tables": render(ROOT / "bench/results/quality.json", ROOT / "results/quality"),
        "null-anatomy": null_anatomy(ROOT / "bench/results/null_anatomy.json"),
    })


if __name__ == "__main__":
    main()
