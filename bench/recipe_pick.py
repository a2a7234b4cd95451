"""Which recipe should be the default? Fit each on SmolLM2 and measure what the choice rests on -> JSON.

Per recipe (plus optional overrides): wall time of the fit, steps run and the best validation step (a plateau
means early stopping fired or the best step is well before the end), the separation on the held-out validation
pairs (projection shift +1 vs -1, and the answer log-prob gap change at c = ±1, nats/token), and the side effect
on unseen prompts: ΔNLL (nats/token) of DailyDilemmas prompts at c = ±1 vs c = 0 and their Yes/No mass. Only the
tuning half of dd-honesty is used (the reporting half stays untouched for the budget bench). Heavy: run it under
    flock /tmp/innerpissa-heavy.lock .venv/bin/python bench/recipe_pick.py --recipes reprpo-v0,antipasto
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


from innerpissa.concepts import load_concept
from innerpissa.concepts.fit_data import fit_pairs
from innerpissa.eval.datasets import limit_rows, load_dataset, split_by_dilemma
from innerpissa.eval.score import score
from innerpissa.models import load_model
from innerpissa.steerers.innerpissa import InnerPiSSASteerer
from innerpissa.train import Trainer

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, write  # noqa: E402


def val_metrics(tr: Trainer) -> dict[str, float]:
    """Separation on the validation pairs with the trained adapter: projection shifts and answer-gap changes."""
    _, logged = tr.objective.validation_step(tr.objective.u)
    return {k: logged[k] for k in ("shift_pos", "shift_neg", "dlp_pos", "dlp_neg", "loss")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipes", default="reprpo-v0,antipasto", help="RECIPE or RECIPE:LABEL, comma-separated")
    ap.add_argument("--override", action="append", default=[], help="NAME=JSON of {adapter,loss,train} overrides")
    ap.add_argument("--rows", type=int, default=32, help="dd-honesty tuning-half rows for ΔNLL")
    ap.add_argument("--out", default="recipe_pick", help="name of the JSON in bench/results/ (runs are merged in)")
    args = ap.parse_args()
    overrides = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.override)}
    model, tok = load_model("smollm2-135m")
    es = limit_rows(split_by_dilemma(load_dataset("dd-honesty"), "tune"), args.rows, seed=0)
    out_path = RESULTS / f"{args.out}.json"
    results = json.loads(out_path.read_text()).get("runs", {}) if out_path.is_file() else {}
    for name in args.recipes.split(","):
        label = name.split(":")[-1]
        recipe = name.split(":")[0]
        ov = overrides.get(label, {})
        st = InnerPiSSASteerer(recipe, **ov)
        train, val = fit_pairs("honesty", recipe=recipe)
        t0 = time.perf_counter()
        tr = Trainer(model, tok, train, val, st.adapter_cfg, st.loss_cfg, st.train_cfg, progress=False)
        res = tr.run()
        fit_s = time.perf_counter() - t0
        st.model, st.result = model, res
        vm = val_metrics(tr)
        tab = score(model, tok, st, es, coeffs=(-1.0, 0.0, 1.0), batch_size=8, progress=False)
        by_c = tab.groupby("coeff")
        nll, pmass = by_c["nll"].mean(), by_c["pmass"].mean()
        results[label] = {
            "recipe": recipe, "overrides": ov, "fit_s": round(fit_s, 1), "steps_run": len(res.history),
            "total_steps": tr.objective.total_steps, "best_step": res.best_step, "sign_flipped": res.sign_flipped,
            "val_shift": res.val_shift, "val": vm, "n_train": len(train), "n_val_used": len(tr.objective.val_pairs),
            "dnll_pos": float(nll[1.0] - nll[0.0]), "dnll_neg": float(nll[-1.0] - nll[0.0]),
            "pmass": {str(k): float(v) for k, v in pmass.items()}, "rows": len(es.rows),
            "history": res.history, "load": os.getloadavg()[0],
        }
        print(json.dumps({k: v for k, v in results[label].items() if k != "history"}), flush=True)
        write(args.out, {"runs": results})


if __name__ == "__main__":
    main()
