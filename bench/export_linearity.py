"""How far an exported LoRA adapter's linear scaling is from InnerPiSSA's own (non-linear) path in c.

An adapter exported at c0 is exact at c0 (`innerpissa export`); peft's scale t then gives t·ΔW(c0), while
InnerPiSSA at t·c0 gives ΔW(t·c0) (Cayley rotations, S·exp(cλ)). We train a default InnerPiSSA adapter on
SmolLM2-135M (honesty, seed 0), export it at c0 = ±1, and compare at t = 0.5 and 2 (and t = 1 as a check):
- weights: ‖t·ΔW(c0) − ΔW(t·c0)‖_F / ‖ΔW(t·c0)‖_F per adapted module (median, max);
- outputs, on 16 held-out honesty texts at every position: the relative error of the logit shift
  ‖Δ_lora − Δ_ip‖ / ‖Δ_ip‖ (Δ = logits − base logits) and mean KL(p_ip ‖ p_lora) next to KL(p_ip ‖ p_base).
-> bench/results/export_linearity.json
Run: flock /tmp/innerpissa-heavy.lock python bench/export_linearity.py [--steps 24]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer

sys.path.insert(0, str(Path(__file__).parent))
from common import write  # noqa: E402

from innerpissa.adapter import adapter_layers, remove, steer  # noqa: E402
from innerpissa.adapter.export import save_peft_lora  # noqa: E402
from innerpissa.batching import encode_pairs  # noqa: E402
from innerpissa.concepts import load_concept, make_pairs  # noqa: E402
from innerpissa.models import load_model  # noqa: E402
from innerpissa.steerers.innerpissa import InnerPiSSASteerer  # noqa: E402

C0 = (1.0, -1.0)
TS = (0.5, 1.0, 2.0)


def kl(p_logits: torch.Tensor, q_logits: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over real positions of KL(p ‖ q)."""
    lp, lq = p_logits.log_softmax(-1), q_logits.log_softmax(-1)
    per = (lp.exp() * (lp - lq)).sum(-1)
    return float((per * mask).sum() / mask.sum())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=24)
    args = ap.parse_args()
    model, tok = load_model("smollm2-135m")
    train, val = make_pairs(load_concept("honesty"), seed=0)
    t0 = time.perf_counter()
    steerer = InnerPiSSASteerer(train={"steps": args.steps, "seed": 0})
    steerer.fit(model, tok, train, val, progress=False)
    fit_s = time.perf_counter() - t0
    batch = encode_pairs(tok, val.subset(list(range(8))), 128)  # 16 texts (both personas), unseen in training
    inputs, mask = batch.model_inputs(), batch.attention_mask.float()
    with torch.no_grad():
        base = model(**inputs).logits
        ip = {}
        for c in {t * c0 for t in TS for c0 in C0}:
            with steer(model, c):
                ip[c] = model(**inputs).logits
        weights = {}
        for c0 in C0:
            for t in TS:
                rel = [float((t * L.delta_weight(c0) - L.delta_weight(t * c0)).norm() / L.delta_weight(t * c0).norm())
                       for L in adapter_layers(model).values()]
                weights[(c0, t)] = {"median": float(np.median(rel)), "max": float(np.max(rel))}
    tmp = Path(tempfile.mkdtemp())
    for c0 in C0:
        save_peft_lora(model, c0, tmp / f"c{c0:+g}")
    remove(model)  # the base model again; the exported adapters go on it through peft
    rows = []
    for c0 in C0:
        pm = PeftModel.from_pretrained(model, str(tmp / f"c{c0:+g}"))
        lora_layers = [m for m in pm.modules() if isinstance(m, LoraLayer)]
        for t in TS:
            for m in lora_layers:
                m.set_scale("default", t)
            with torch.no_grad():
                lo = pm(**inputs).logits
            d_ip, d_lo = ip[t * c0] - base, lo - base
            rows.append({
                "c0": c0, "t": t, "ip_coeff": t * c0,
                "weight_rel_err_median": weights[(c0, t)]["median"], "weight_rel_err_max": weights[(c0, t)]["max"],
                "logit_shift_rel_err": float((d_lo - d_ip).norm() / d_ip.norm()),
                "kl_ip_vs_lora": kl(ip[t * c0], lo, mask), "kl_ip_vs_base": kl(ip[t * c0], base, mask),
                "max_abs_logit_diff": float((lo - ip[t * c0]).abs().max()),
            })
            print({k: round(v, 5) if isinstance(v, float) else v for k, v in rows[-1].items()}, flush=True)
        model = pm.unload()
    path = write("export_linearity", {
        "model": "smollm2-135m", "concept": "honesty", "seed": 0, "train_steps": args.steps, "fit_seconds": round(fit_s, 1),
        "adapter": steerer.adapter_cfg.model_dump(mode="json"), "n_texts": len(batch), "rows": rows,
    })
    print(path)


if __name__ == "__main__":
    main()
