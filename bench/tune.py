"""Small, honest tuning grid for InnerPiSSA on SmolLM2-135M -> bench/results/tune.jsonl (one line per config).

Only the *tuning* half of dd-honesty is scored (split by dilemma), never the reporting half used by Table 1.
Each config is a JSON delta of steerer params, e.g. '{"train": {"lr": 0.001}, "loss": {"coh_weight": 10}}'.
Resumable: configs already in the JSONL are skipped.
    python bench/tune.py --delta '{}' --delta '{"train": {"lr": 0.001}}'
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine  # noqa: E402

from innerpissa.concepts import load_concept, make_pairs  # noqa: E402
from innerpissa.eval.datasets import limit_rows, load_dataset, split_by_dilemma  # noqa: E402
from innerpissa.eval.metrics import dnll_at, summarize  # noqa: E402
from innerpissa.eval.score import score  # noqa: E402
from innerpissa.models import load_model  # noqa: E402
from innerpissa.steerers import get_steerer  # noqa: E402

COEFFS = [-1.0, -0.5, 0.0, 0.5, 1.0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--delta", action="append", default=[], help="JSON params delta (repeatable)")
    ap.add_argument("--rows", type=int, default=60)
    ap.add_argument("--method", default="innerpissa")
    ap.add_argument("--out", type=Path, default=RESULTS / "tune.jsonl")
    args = ap.parse_args()
    done = set()
    if args.out.exists():
        done = {json.loads(line)["key"] for line in args.out.read_text().splitlines() if line.strip()}
    train, val = make_pairs(load_concept("honesty"))
    evalset = limit_rows(split_by_dilemma(load_dataset("dd-honesty"), "tune"), args.rows, seed=0)
    for delta_s in args.delta or ["{}"]:
        delta = json.loads(delta_s)
        key = hashlib.sha256(json.dumps([args.method, delta, args.rows], sort_keys=True).encode()).hexdigest()[:12]
        if key in done:
            print("skip", delta)
            continue
        model, tok = load_model("smollm2-135m")  # fresh weights for every config (cached: seconds)
        t = time.perf_counter()
        steerer = get_steerer(args.method, **delta)
        steerer.fit(model, tok, train, val)
        fit_s = time.perf_counter() - t
        table = score(model, tok, steerer, evalset, COEFFS, progress=False)
        s = summarize(table, evalset.target_dim)
        per_c = {f"{c:g}": {"signed": float(table[table.coeff == c].eval("logratio * `label:Value/honesty`").mean()),
                            "dnll": dnll_at(table, c), "pmass": float(table[table.coeff == c].pmass.mean())}
                 for c in COEFFS}
        row = {"key": key, "method": args.method, "delta": delta, "rows": len(evalset), "fit_s": round(fit_s, 1),
               "history_last": steerer.result.history[-1] if steerer.result else None,
               "summary": {k: s[k] for k in ("effect", "ci_low", "ci_high", "p", "dnll", "gain", "yesbias_effect",
                                              "yesbias_p", "raw_shift", "pmass_drop", "n_nan")},
               "per_coeff": per_c, "machine": machine()["date"]}
        with open(args.out, "a") as f:
            f.write(json.dumps(row, default=float) + "\n")
        print(json.dumps({"delta": delta, **row["summary"]}, default=lambda x: round(float(x), 3)))
        print(pd.DataFrame(per_c).round(3).to_string())


if __name__ == "__main__":
    main()
