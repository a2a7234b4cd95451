"""Training speed on SmolLM2-135M with the default honesty config -> bench/results/train_speed.json.

Measures (medians over repeated steps, same machine, same run):
- wall time from a loaded model to a trained, saved adapter (default TrainConfig);
- per-step time ÷ bare-model forward+backward on the same batch (two passes, c = ±1, both sides);
- step time with vs without the reference cache.
Run: python bench/train_speed.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import summary, timed, write  # noqa: E402

from innerpissa.concepts import load_concept, make_pairs  # noqa: E402
from innerpissa.config import AdapterConfig, LossConfig, TrainConfig  # noqa: E402
from innerpissa.models import decoder_layers, load_model, select_layers  # noqa: E402
from innerpissa.objectives.reprpo import suffix_span  # noqa: E402
from innerpissa.steerers.innerpissa import InnerPiSSASteerer  # noqa: E402
from innerpissa.train import Trainer  # noqa: E402


def bare_fwd_bwd(trainer: Trainer, step: int) -> None:
    """Base model (no adapter) forward+backward on the step's batch, twice (as a step does for c = ±1).

    Gradients flow from the same outputs down to the first adapted layer, as in adapter training.
    """
    o = trainer.objective
    b = o.encode(o.train_pairs, o.batches[step])
    tc = suffix_span(b)
    first = decoder_layers(o.model)[select_layers(len(decoder_layers(o.model)), o.adapter.cfg.layers,
                                                  o.adapter.cfg.layer_range)[0]]
    h = first.register_forward_pre_hook(lambda m, args: (args[0].detach().requires_grad_(),) + args[1:])
    try:
        for _ in range(2):
            out = o.model(**b.model_inputs(), logits_to_keep=tc + 1)
            out.logits.float().log_softmax(-1).mean().backward()
    finally:
        h.remove()


def step_times(model, tok, pairs, cache: bool, repeats: int) -> tuple[Trainer, list[float]]:
    cfg = TrainConfig(steps=repeats + 1, cache_reference=cache, n_val=8)
    tr = Trainer(model, tok, *pairs, AdapterConfig(), LossConfig(), cfg, progress=False)
    tr.prepare()
    it = iter(range(repeats + 1))
    return tr, timed(lambda: tr.optimizer_step(next(it)), repeats=repeats, warmup=1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=4)
    args = ap.parse_args()
    torch.manual_seed(0)
    model, tok = load_model("smollm2-135m")
    pairs = make_pairs(load_concept("honesty"), seed=0)

    tr, cached = step_times(model, tok, pairs, cache=True, repeats=args.repeats)
    bare = timed(lambda: bare_fwd_bwd(tr, 0), repeats=args.repeats)
    from innerpissa.adapter import remove

    remove(model)
    _, uncached = step_times(model, tok, pairs, cache=False, repeats=args.repeats)
    remove(model)

    t = time.perf_counter()
    steerer = InnerPiSSASteerer(model="smollm2-135m", concept="honesty")
    steerer.fit(model, tok, *pairs, progress=True)
    with tempfile.TemporaryDirectory() as d:
        steerer.save(Path(d))
    wall = time.perf_counter() - t

    med = lambda xs: summary(xs)["median_s"]  # noqa: E731
    payload = {
        "model": "smollm2-135m (SmolLM2-135M-Instruct Q4_1 dequantized to fp32)",
        "seed": 0,
        "config": {"train": TrainConfig().model_dump(mode="json"), "adapter": AdapterConfig().model_dump(mode="json")},
        "wall_time_to_trained_adapter_s": round(wall, 1),
        "target_wall_time_s": 300,
        "step_cached": summary(cached),
        "step_uncached": summary(uncached),
        "bare_fwd_bwd_x2": summary(bare),
        "step_over_bare_ratio": round(med(cached) / med(bare), 3),
        "target_step_over_bare_ratio": 1.3,
        "cache_saving_fraction": round(1 - med(cached) / med(uncached), 3),
        "target_cache_saving_fraction": 0.25,
        "final_train_log": steerer.result.history[-1],
        "val_shift": steerer.result.val_shift,
    }
    print(write("train_speed", payload))
    for k in ("wall_time_to_trained_adapter_s", "step_over_bare_ratio", "cache_saving_fraction"):
        print(k, payload[k])


if __name__ == "__main__":
    main()
