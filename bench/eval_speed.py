"""Benchmark the evaluator: eval forward tokens/s vs a bare model forward on the same batches, and the
wall time of scoring dd-honesty at 3 coefficients. Writes JSON (default bench/results/eval_speed.json).

  python bench/eval_speed.py [--model smollm2-135m] [--n-batches 8] [--reps 3]

Throughput: `n_batches` length-sorted batches spread evenly over dd-honesty, each timed `reps` times for
  bare      model(**inputs)                      (HF default: logits at every position),
  last      model(**inputs, logits_to_keep=1)    (last-position logits only, no NLL),
  eval      `forward_scores` (last-position yes/no log-probs + the prompt NLL from the same forward),
interleaved so that load from other processes hits all three alike; tokens = real (non-pad) tokens.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from innerpissa.eval.datasets import load_dataset
from innerpissa.eval.score import answer_ids, forward_scores, make_batches, score
from innerpissa.io import atomic_write_json
from innerpissa.models import load_model, model_id


class Identity:
    """The unsteered model (c is ignored): what the evaluator costs on its own."""

    name = "identity"

    def steer(self, model, c):  # noqa: ANN001, ANN201
        import contextlib

        return contextlib.nullcontext()

    def messages(self, messages, c):  # noqa: ANN001, ANN201
        return messages


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dataset", default="dd-honesty")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--n-batches", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-wall", action="store_true", help="skip the full dd-honesty x 3 coefficients run")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "eval_speed.json")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    load0 = os.getloadavg()
    model, tok = load_model(args.model)
    es = load_dataset(args.dataset, seed=args.seed)
    rows = es.rows
    ids = answer_ids(tok, list(rows["choice_pos"]) + list(rows["choice_neg"]))
    batches, _ = make_batches(tok, list(rows["messages"]), args.batch_size, args.max_length)
    pick = np.unique(np.linspace(0, len(batches) - 1, min(args.n_batches, len(batches))).round().astype(int))
    chosen = [batches[i] for i in pick]
    n_tokens = int(sum(b.attention_mask.sum() for _, b in chosen))

    def bare() -> None:
        for _, b in chosen:
            model(**b.model_inputs())

    def last() -> None:
        for _, b in chosen:
            model(**b.model_inputs(), logits_to_keep=1)

    def ev() -> None:
        for idx, b in chosen:
            forward_scores(model, b, [ids[w] for w in rows["choice_pos"].iloc[idx]], [ids[w] for w in rows["choice_neg"].iloc[idx]])

    times: dict[str, list[float]] = {"bare": [], "last": [], "eval": []}
    with torch.no_grad():
        bare()  # warm-up
        for _ in range(args.reps):
            for name, fn in (("bare", bare), ("last", last), ("eval", ev)):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "python": sys.version.split()[0], "torch": torch.__version__,
                    "device": str(model.device), "loadavg_start": load0},
        "model": model_id(model), "dataset": args.dataset, "n_rows": len(rows), "batch_size": args.batch_size,
        "max_length": args.max_length, "seed": args.seed, "reps": args.reps,
        "throughput": {
            "n_batches": len(chosen), "batch_indices": pick.tolist(), "n_batches_total": len(batches), "tokens": n_tokens,
            "seconds": times, "median_seconds": med,
            "tokens_per_s": {k: n_tokens / v for k, v in med.items()},
            "ratio_eval_vs_bare": med["bare"] / med["eval"],
            "ratio_eval_vs_last_logits_only": med["last"] / med["eval"],
        },
    }
    if not args.skip_wall:
        t0 = time.perf_counter()
        table = score(model, tok, Identity(), es, [-1.0, 0.0, 1.0], args.batch_size, args.max_length)
        result["wall"] = {"coeffs": [-1.0, 0.0, 1.0], "seconds": time.perf_counter() - t0, "rows_scored": len(table),
                          "n_nan": int(table["logratio"].isna().sum()), "median_pmass": float(table["pmass"].median())}
    result["machine"]["loadavg_end"] = os.getloadavg()
    atomic_write_json(args.out, result)
    print(f"eval {result['throughput']['tokens_per_s']['eval']:.0f} tok/s vs bare {result['throughput']['tokens_per_s']['bare']:.0f} "
          f"tok/s: ratio {result['throughput']['ratio_eval_vs_bare']:.2f}; wall {result.get('wall', {}).get('seconds', float('nan')):.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
