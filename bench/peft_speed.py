"""LoRA / DoRA / PiSSA baselines: train-step and eval-forward time, before vs after the move to peft's own layers.

"before" is `innerpissa/steerers/peft_lora.py` at commit BEFORE (SignedDeltaLinear: an fp32 copy of each weight,
full ΔW rebuilt every forward), read from git and imported beside the current code; "after" is the current
module. Same weights (one model copy each), batches and machine, timed in turn (A B A B ...) in one run. SmolLM2-135M, default baseline config
(r = 8, o_proj + down_proj, layers 30-80 %). -> bench/results/peft_speed.json
Run: flock /tmp/innerpissa-heavy.lock python bench/peft_speed.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import summary, write  # noqa: E402

from innerpissa.surgery import replace_module  # noqa: E402
from innerpissa.batching import encode_pairs  # noqa: E402
from innerpissa.concepts import load_concept, make_pairs  # noqa: E402
from innerpissa.config import LossConfig, TrainConfig  # noqa: E402
from innerpissa.models import load_model  # noqa: E402
from innerpissa.steerers import peft_lora as after  # noqa: E402
from innerpissa.train import Trainer  # noqa: E402

BEFORE = "3de18bc"  # last commit with SignedDeltaLinear
ROOT = Path(__file__).parent.parent


def load_before() -> object:
    """The old peft_lora module from git, imported as a sibling of the current steerers package."""
    src = subprocess.run(["git", "show", f"{BEFORE}:innerpissa/steerers/peft_lora.py"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "peft_lora_before.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("innerpissa.steerers.peft_lora_before", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def detach(model: torch.nn.Module, handle: object) -> None:
    """Put the plain base layers back (both implementations keep them as `base_layer`)."""
    for name, layer in handle.layers().items():
        replace_module(model, name, layer.base_layer)


def prepared(impl: object, variant: str, model, tok, pairs, repeats: int) -> tuple[Trainer, object]:
    """A Trainer (reference cache built, adapter attached) for one implementation on its own model copy."""
    handle = impl.PeftTrainable(model, variant, 8, 16.0, ("o_proj", "down_proj"), (0.3, 0.8), seed=0)
    tr = Trainer(model, tok, *pairs, handle, LossConfig(), TrainConfig(steps=repeats + 1, n_val=8), progress=False)
    tr.prepare()
    return tr, handle


def interleaved(fns: dict[str, object], repeats: int) -> dict[str, list[float]]:
    """Wall times of each fn, called in turn (A B A B ...) after one untimed round, so load hits both alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(repeats + 1):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn(i)
            if i:
                times[k].append(time.perf_counter() - t)
    return times


def measure(impls: dict[str, object], models: dict[str, object], variant: str, tok, pairs, prompts, repeats: int) -> dict:
    run = {k: prepared(impls[k], variant, models[k], tok, pairs, repeats) for k in impls}
    losses: dict[str, list[float]] = {k: [] for k in impls}
    steps = interleaved({k: (lambda i, k=k: losses[k].append(run[k][0].optimizer_step(i)[0]["loss"])) for k in impls},
                        repeats)
    out = {k: {"train_step": summary(steps[k]), "step_losses": losses[k]} for k in impls}
    for c in (0.0, 1.0):
        def fwd(k: str, i: int) -> None:
            with torch.no_grad(), (run[k][1].steer(c) if c else contextlib.nullcontext()):
                models[k](**prompts.model_inputs(), logits_to_keep=1)
        ev = interleaved({k: (lambda i, k=k: fwd(k, i)) for k in impls}, repeats)
        for k in impls:
            out[k][f"eval_forward_c{c:g}"] = summary(ev[k])
    for k in impls:
        detach(models[k], run[k][1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    before = load_before()
    model, tok = load_model("smollm2-135m")
    models = {"before": model, "after": copy.deepcopy(model)}  # one copy per implementation, timed in turn
    train, val = make_pairs(load_concept("honesty"))
    pairs = (train.subset(list(range(32))), val.subset(list(range(8))))
    prompts = encode_pairs(tok, train.subset(list(range(8))), 128)  # 16 rows, as an eval batch
    res: dict = {}
    for variant in ("lora", "dora", "pissa"):
        res[variant] = measure({"before": before, "after": after}, models, variant, tok, pairs, prompts, args.repeats)
        r = res[variant]
        r["ratio_after_over_before"] = {k: r["after"][k]["median_s"] / r["before"][k]["median_s"]
                                        for k in ("train_step", "eval_forward_c0", "eval_forward_c1")}
        print(variant, {k: round(v, 3) for k, v in r["ratio_after_over_before"].items()}, flush=True)
    path = write("peft_speed", {"model": "smollm2-135m", "before_commit": BEFORE, "repeats": args.repeats,
                                "batch": "train: 8 pairs x 2 sides; eval: 16 rows, logits_to_keep=1",
                                "results": res})
    print(path)


if __name__ == "__main__":
    main()
