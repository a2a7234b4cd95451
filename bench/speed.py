"""bf16 vs fp32 and the inference cost of steering, on SmolLM2-135M -> bench/results/speed.json.

  flock /tmp/innerpissa-heavy.lock python bench/speed.py [--eval-rows 64] [--steps 8] [--reps 2] [--sections train,eval]

`--sections` reruns only some sections (matmul, train, eval, stride, generation, effect) and keeps the others' blocks from
the existing speed.json (each section's block records when it ran, `ran`); the headline is rebuilt from what is there.

All ratios come from one process on one machine, with the compared variants interleaved rep by rep so
that load from other processes hits them alike (the load average is recorded at start and end):
- bf16_matmul_ratio: the ceiling, bf16 ÷ fp32 time of the model's own Linear shapes (forward and both backward
  products, 2048 tokens), weighted by how many layers have each shape;
- bf16_step_ratio: one optimizer step of the default recipe (c = ±1) in bf16 ÷ fp32, the same batch, with the
  frozen linears cast to bf16 once per step (`Trainer.run` casts them once per fit, so this is an upper bound); with
  attention left in bf16: `bf16_step_ratio_bf16_attention`; with plain autocast re-casting every frozen weight
  on every forward (how steps ran before the copies): `bf16_step_ratio_autocast_recast`;
- eval throughput (real tokens/s) of `forward_scores` ÷ a bare full-logits forward, same batches, per precision,
  at the default prompt-NLL stride (`score.NLL_STRIDE`) and at strides 1 and 2;
- stride_error: how far ΔNLL(c) vs c = 0 from every `s`-th prompt token is from the every-token ΔNLL, for a trained
  bf16 adapter on a dd-honesty subset (mean and per row), next to the sampling SE of the mean over rows;
- bf16_eval_ratio: wall time of scoring a fixed dd-honesty subset (whole dilemmas) × 3 coefficients with a
  trained InnerPiSSA adapter, the default (bf16, each dilemma's shared prefix run once) ÷ fp32 scoring every row
  whole (how evaluation ran before); `bf16_eval_ratio_same_scoring` and `shared_prefix_ratio_fp32` split it
  (the full 674-question set is too slow for a shared 2-core machine);
- the effect estimate (slope, bootstrap CI) of that adapter on that subset in fp32 and in bf16, and of an
  adapter trained *and* scored in bf16;
- greedy generation tokens/s steered at c = 1 ÷ the base model: InnerPiSSA unmerged and merged, every
  activation-addition baseline's hooks, prompting (longer prompt), LoRA (peft layers);
- `profile`: per phase (reference cache, train step, eval forward, prompt NLL) in bf16, its wall time and the top
  ops by self CPU time (torch.profiler); `phases` keeps tokenisation and Cayley-solve timings.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import time
from collections import Counter
from unittest import mock
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine, write  # noqa: E402

from innerpissa import adapter as A  # noqa: E402
from innerpissa.concepts import load_concept, make_pairs  # noqa: E402
from innerpissa.config import AdapterConfig, LossConfig, TrainConfig  # noqa: E402
from innerpissa.eval.datasets import limit_rows, load_dataset  # noqa: E402
from innerpissa.eval.metrics import summarize  # noqa: E402
from innerpissa.eval.score import NLL_STRIDE, answer_ids, forward_scores, make_batches, nll_offsets, prompt_nll, score  # noqa: E402
from innerpissa.models import load_model  # noqa: E402
from innerpissa.precision import autocast, cpu_flags, cpu_has_bf16, resolve  # noqa: E402
from innerpissa.steerers import get_steerer  # noqa: E402
from innerpissa.steerers.innerpissa import InnerPiSSASteerer  # noqa: E402
from innerpissa import precision as precision_mod  # noqa: E402
from innerpissa.recipes import DEFAULT_RECIPE, apply_data, resolve as resolve_recipe  # noqa: E402
from innerpissa.train import Trainer  # noqa: E402

PRECS = ("fp32", "bf16")
SECTIONS = ("matmul", "train", "eval", "stride", "generation", "effect")
FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "bf16")
GEN_PROMPTS = ["Did you eat the last cookie?", "Tell me about your weekend.",
               "Should I tell my boss about the mistake?", "What is the capital of France?"]


def interleaved(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, list[float]]:
    """Wall times of each fn, one warm-up each, then `reps` rounds calling every fn once per round."""
    for fn in fns.values():
        fn()
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            out[k].append(time.perf_counter() - t)
    return out


def med(xs: list[float]) -> float:
    return float(np.median(xs))


def top_ops(fn: Callable[[], object], n: int = 8) -> list[dict]:
    """The `n` ops with the most self CPU time in one call of fn (torch.profiler)."""
    return phase_profile(fn, n)["top_ops"]


MATMUL_OPS = frozenset({"aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul"})


def phase_profile(fn: Callable[[], object], n: int = 10) -> dict:
    """One profiled call of fn: wall seconds (under the profiler), the matmul share of self CPU time, the top `n` ops."""
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    wall = time.perf_counter() - t
    ev = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ev) or 1
    mm = sum(e.self_cpu_time_total for e in ev if e.key in MATMUL_OPS)
    return {"wall_s": round(wall, 3), "matmul_share": round(mm / total, 3),
            "top_ops": [{"op": e.key, "self_s": round(e.self_cpu_time_total / 1e6, 3),
                         "share": round(e.self_cpu_time_total / total, 3)} for e in ev[:n]]}


def fwd_bwd(x: torch.Tensor, w: torch.Tensor, gy: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A Linear's three products: forward, gradient wrt the input, gradient wrt the weight."""
    return x @ w, gy @ w.T, x.T @ gy


def matmul_section(model, reps: int, tokens: int = 2048) -> dict:
    """The hardware's ceiling: bf16 ÷ fp32 time of the model's own matmul shapes (every distinct Linear, forward
    [T, in] @ [in, out] and the two backward products), interleaved. A step made of matmuls cannot beat this ratio."""
    counts = Counter(tuple(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Linear))
    g = torch.Generator().manual_seed(0)
    out: dict = {"tokens": tokens, "threads": torch.get_num_threads(), "shapes": {}}
    total = {p: 0.0 for p in PRECS}
    for (o, i), n in sorted(counts.items()):
        mats = {p: (torch.randn(tokens, i, generator=g).to(dt), torch.randn(i, o, generator=g).to(dt),
                    torch.randn(tokens, o, generator=g).to(dt))
                for p, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
        times = interleaved({p: (lambda m=m: fwd_bwd(*m)) for p, m in mats.items()}, reps)
        flops = 3 * 2 * tokens * i * o
        t = {p: med(v) for p, v in times.items()}
        out["shapes"][f"{i}x{o}"] = {"gflops": {p: flops / t[p] / 1e9 for p in PRECS}, "bf16_ratio": t["bf16"] / t["fp32"]}
        for p in PRECS:
            total[p] += t[p] * n
    out["bf16_ratio_model_weighted"] = total["bf16"] / total["fp32"]
    return out


def train_section(model, tok, pairs, reps: int) -> tuple[dict, dict]:
    """bf16 vs fp32 optimizer step of the default recipe on one fixed batch (step 0, repeated); bf16 with its SDPA
    attention left in bf16 too (what `fp32_attention` avoids); reference-cache time per precision; top ops."""
    acfg, lcfg, tcfg = resolve_recipe(DEFAULT_RECIPE, None, None, None)
    trainers, ref_s = {}, {}
    for p in PRECS:  # both share the one adapter (the second attach sees it); each has its own cache and optimizer
        tr = Trainer(model, tok, *pairs, acfg, lcfg, tcfg.model_copy(update={"steps": 4 * reps + 8, "precision": p}),
                     progress=False)
        t = time.perf_counter()
        tr.prepare()
        ref_s[p] = time.perf_counter() - t
        trainers[p] = tr

    def step(p: str) -> None:
        """One step as `Trainer.run` takes it: under bf16 the frozen linears are bf16 copies, made once per fit
        there; here (both trainers share the model) once per step, so the bf16 time includes that cast."""
        with precision_mod.bf16_frozen_linears(model) if p == "bf16" else contextlib.nullcontext():
            trainers[p].optimizer_step(0)

    def bf16_attention() -> None:
        with mock.patch.object(precision_mod, "fp32_attention", contextlib.nullcontext):
            step("bf16")

    def bf16_recast() -> None:  # autocast alone: every frozen weight re-cast on every forward (before the copies)
        trainers["bf16"].optimizer_step(0)

    times = interleaved({**{p: (lambda p=p: step(p)) for p in trainers},
                         "bf16_bf16_attention": bf16_attention, "bf16_autocast_recast": bf16_recast}, reps)
    n_ref = len({i for b in trainers["fp32"].objective.batches for i in b}) + len(trainers["fp32"].objective.val_pairs)
    out = {"recipe": DEFAULT_RECIPE, "batch_pairs": tcfg.batch_size, "step_seconds": times,
           "bf16_step_ratio": med(times["bf16"]) / med(times["fp32"]),
           "bf16_step_ratio_bf16_attention": med(times["bf16_bf16_attention"]) / med(times["fp32"]),
           "bf16_step_ratio_autocast_recast": med(times["bf16_autocast_recast"]) / med(times["fp32"])}
    used = sorted({i for b in trainers["bf16"].objective.batches for i in b})
    phases = {"reference_cache_s": {"pairs": n_ref, **ref_s}, "train_step_s": {p: med(v) for p, v in times.items()},
              "profile": {f"reference_cache_{p}": phase_profile(lambda o=tr.objective: o._build_cache(o.train_pairs, used))
                          for p, tr in trainers.items()}}
    phases["profile"].update({f"train_step_{p}": phase_profile(lambda p=p: step(p)) for p in trainers})
    t = time.perf_counter()
    with precision_mod.bf16_frozen_linears(model):
        phases["frozen_linears_bf16_copy_s"] = time.perf_counter() - t
    layers = list(A.adapter_layers(model).values())
    t = time.perf_counter()
    with torch.no_grad():
        for layer in layers:
            layer.core_delta(1.0)
    phases["cayley_core_all_layers_s"] = {"layers": len(layers), "seconds": time.perf_counter() - t}
    A.remove(model)
    return out, phases


def eval_section(model, tok, reps: int, n_batches: int) -> tuple[dict, dict]:
    """Tokens/s of bare (full logits), last-only, eval (NLL strides 1, 2 and the default) per precision, interleaved."""
    es = load_dataset("dd-honesty")
    rows = es.rows
    ids = answer_ids(tok, list(rows["choice_pos"]) + list(rows["choice_neg"]))
    t = time.perf_counter()
    batches, _ = make_batches(tok, list(rows["messages"]), 16, 512)
    tokenise_s = time.perf_counter() - t
    pick = np.unique(np.linspace(0, len(batches) - 1, n_batches).round().astype(int))
    chosen = [batches[i] for i in pick]
    n_tok = int(sum(b.attention_mask.sum() for _, b in chosen))

    def run(p: str, kind: str) -> Callable[[], None]:
        def fn() -> None:
            with torch.no_grad(), autocast(p, model.device):
                for idx, b in chosen:
                    if kind == "bare":
                        model(**b.model_inputs())
                    elif kind == "last":
                        model(**b.model_inputs(), logits_to_keep=1)
                    else:
                        forward_scores(model, b, [ids[w] for w in rows["choice_pos"].iloc[idx]],
                                       [ids[w] for w in rows["choice_neg"].iloc[idx]], nll_stride=int(kind.split("stride")[1]))
        return fn

    strides = sorted({1, 2, NLL_STRIDE})
    kinds = ("bare", "last", *(f"eval_stride{s}" for s in strides))
    fns = {f"{p}/{k}": run(p, k) for p in PRECS for k in kinds}
    times = interleaved(fns, reps)
    tps = {k: n_tok / med(v) for k, v in times.items()}
    out = {"n_batches": len(chosen), "batch_indices": pick.tolist(), "tokens": n_tok, "nll_stride_default": NLL_STRIDE,
           "seconds": times, "tokens_per_s": tps}
    for p in PRECS:
        out[f"eval_vs_bare_{p}"] = tps[f"{p}/eval_stride{NLL_STRIDE}"] / tps[f"{p}/bare"]
        out[f"last_only_vs_bare_{p}"] = tps[f"{p}/last"] / tps[f"{p}/bare"]
        for s in strides:
            out[f"eval_stride{s}_vs_bare_{p}"] = tps[f"{p}/eval_stride{s}"] / tps[f"{p}/bare"]
    out["bf16_forward_ratio"] = med(times["bf16/bare"]) / med(times["fp32/bare"])
    phases = {"tokenise_dd_honesty_s": {"rows": len(rows), "seconds": tokenise_s},
              "eval_forward_last_only_s": {p: med(times[f"{p}/last"]) for p in PRECS},
              **{f"prompt_nll_stride{s}_s": {p: med(times[f"{p}/eval_stride{s}"]) - med(times[f"{p}/last"]) for p in PRECS}
                 for s in strides}}
    finals = {}

    def forward_only() -> None:
        with torch.no_grad(), autocast("bf16", model.device):
            for i, (_, b) in enumerate(chosen):
                finals[i] = model(**b.model_inputs(), logits_to_keep=1, output_hidden_states=True).hidden_states[-1]

    def nll_only(stride: int) -> Callable[[], None]:
        def fn() -> None:
            with torch.no_grad(), autocast("bf16", model.device):
                for i, (_, b) in enumerate(chosen):
                    prompt_nll(model, finals[i], b, stride)
        return fn

    phases["profile"] = {"eval_forward_bf16": phase_profile(forward_only),
                         **{f"prompt_nll_stride{s}_bf16": phase_profile(nll_only(s)) for s in strides}}
    return out, phases


def stride_section(model, tok, pairs, steps: int, n_rows: int, strides: tuple[int, ...] = (1, 2, 4, 8)) -> dict:
    """ΔNLL (c = ±1 vs 0) from every s-th prompt token vs every token, one bf16 forward per (c, batch), trained adapter:
    `stride{s}` starts every row at the last token (the old fixed offset), `stride{s}_rowoffset` at the per-row
    hashed offset that `score` uses."""
    es = limit_rows(load_dataset("dd-honesty"), n_rows, seed=0)
    st = InnerPiSSASteerer(train={"steps": steps, "precision": "bf16"})
    st.fit(model, tok, *pairs, progress=False)
    coeffs = (-1.0, 0.0, 1.0)
    kinds = [(s, False) for s in strides] + [(s, True) for s in strides if s != 1]
    offsets = {s: torch.from_numpy(nll_offsets(es.rows["row_id"], s)) for s in strides}
    nll = {c: {k: np.zeros(len(es)) for k in kinds} for c in coeffs}
    for c in coeffs:
        convs = [st.messages(m, c) for m in es.rows["messages"]]
        batches, _ = make_batches(tok, convs, 16, 512)
        with torch.no_grad(), st.steer(model, c), autocast("bf16", model.device):
            for idx, b in batches:
                final = model(**b.model_inputs(), logits_to_keep=1, output_hidden_states=True).hidden_states[-1]
                for s, hashed in kinds:
                    nll[c][(s, hashed)][idx] = prompt_nll(model, final, b, s, offsets[s][idx] if hashed else None
                                                          ).double().numpy()
    A.remove(model)
    out: dict = {"dataset": "dd-honesty", "rows": len(es), "train_steps": steps, "precision": "bf16", "per_c": {}}
    for c in (-1.0, 1.0):
        d = {k: nll[c][k] - nll[0.0][k] for k in kinds}
        full = d[(1, False)]
        out["per_c"][str(c)] = {
            "dnll_every_token": float(full.mean()),
            "se_of_mean_over_rows": float(full.std(ddof=1) / np.sqrt(len(full))),
            **{f"stride{s}{'_rowoffset' if hashed else ''}": {
                "dnll": float(d[(s, hashed)].mean()), "abs_err_of_mean": float(abs(d[(s, hashed)].mean() - full.mean())),
                "row_rmse": float(np.sqrt(np.mean((d[(s, hashed)] - full) ** 2))),
                "row_corr": float(np.corrcoef(d[(s, hashed)], full)[0, 1])} for s, hashed in kinds if s != 1}}
    return out


def effect_section(model, tok, pairs, steps: int, n_rows: int) -> dict:
    """Train fp32 and bf16 adapters, score a fixed dd-honesty subset × 3 coefficients, effects with CIs."""
    es = limit_rows(load_dataset("dd-honesty"), n_rows, seed=0)
    out: dict = {"dataset": "dd-honesty", "rows": len(es), "coeffs": [-1.0, 0.0, 1.0], "train_steps": steps,
                 "note": f"fixed subset of {len(es)} of 674 rows (whole dilemmas, seed 0): the full set x 3 coefficients "
                         "in both precisions does not fit a ~15 min bench on a shared 2-core machine"}
    steerers = {}
    for p in PRECS:
        st = InnerPiSSASteerer(train={"steps": steps, "precision": p})
        t = time.perf_counter()
        st.fit(model, tok, *pairs, progress=False)
        out[f"train_{p}_s"] = time.perf_counter() - t
        steerers[p] = (st, {k: v.detach().clone() for k, v in model.state_dict().items() if k.split(".")[-1] in ("P_v", "P_u", "lam", "U", "S", "V")})
        A.remove(model)
    wall, tables = {}, {}
    for train_p, eval_p, share in (("fp32", "fp32", False), ("fp32", "fp32", True), ("fp32", "bf16", True), ("bf16", "bf16", True)):
        st, params = steerers[train_p]
        A.attach(model, st.adapter_cfg.model_copy(update={"dims": "top"}))  # the trained U, S, V are loaded next
        model.load_state_dict(params, strict=False)
        key = f"{train_p}_adapter/{eval_p}_eval" + ("" if share else "_whole_rows")
        t = time.perf_counter()
        tables[key] = table = score(model, tok, st, es, [-1.0, 0.0, 1.0], progress=False, precision=eval_p, share_prefix=share)
        wall[key] = time.perf_counter() - t
        s = summarize(table, es.target_dim, 1000, 0)
        out[f"effect_{train_p}_train_{eval_p}_eval" + ("" if share else "_whole_rows")] = {
            k: s[k] for k in ("effect", "ci_low", "ci_high", "p", "dnll")}
        A.remove(model)
    out["eval_wall_s"] = wall
    # the headline: today's default (bf16, shared prefixes) against the fp32 whole-row scoring this issue started from
    out["bf16_eval_ratio"] = wall["fp32_adapter/bf16_eval"] / wall["fp32_adapter/fp32_eval_whole_rows"]
    out["bf16_eval_ratio_same_scoring"] = wall["fp32_adapter/bf16_eval"] / wall["fp32_adapter/fp32_eval"]
    out["shared_prefix_ratio_fp32"] = wall["fp32_adapter/fp32_eval"] / wall["fp32_adapter/fp32_eval_whole_rows"]
    a, b = tables["fp32_adapter/fp32_eval"], tables["fp32_adapter/fp32_eval_whole_rows"]
    out["shared_vs_whole_fp32_max_abs_diff"] = {c: float(np.nanmax(np.abs(a[c].to_numpy() - b[c].to_numpy()))) for c in ("logratio", "nll")}
    f, b = out["effect_fp32_train_fp32_eval"], out["effect_fp32_train_bf16_eval"]
    out["bf16_eval_effect_within_fp32_ci"] = bool(f["ci_low"] <= b["effect"] <= f["ci_high"])
    bb = out["effect_bf16_train_bf16_eval"]
    out["bf16_run_effect_within_fp32_ci"] = bool(f["ci_low"] <= bb["effect"] <= f["ci_high"])
    return out


def gen_section(model, tok, pairs, reps: int, new_tokens: int) -> dict:
    """Greedy generation tokens/s at c = 1 ÷ the base model, per steering method; InnerPiSSA in both precisions."""
    from innerpissa.batching import encode

    def gen_fn(steerer, c: float, p: str, m=model) -> Callable[[], None]:
        convs = [steerer.messages([{"role": "user", "content": q}], c) if steerer else [{"role": "user", "content": q}]
                 for q in GEN_PROMPTS]
        b = encode(tok, convs)

        def fn() -> None:
            ctx = steerer.steer(m, c) if steerer else contextlib.nullcontext()
            with torch.no_grad(), ctx, autocast(p, m.device):
                m.generate(input_ids=b.input_ids, attention_mask=b.attention_mask, max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        return fn

    n_tok = new_tokens * len(GEN_PROMPTS)
    st = InnerPiSSASteerer()
    st.model = model
    A.attach(model, st.adapter_cfg.model_copy(update={"dims": "top"}))  # random init (top-r dims): a trained one costs the same
    with torch.no_grad():
        for prm in A.trainable_parameters(model):
            prm.normal_(0, 0.02)
    merged = copy.deepcopy(model)
    A.merge(merged, 1.0)
    fns = {}
    for p in PRECS:
        fns[f"{p}/base"] = gen_fn(None, 0.0, p)
        fns[f"{p}/innerpissa_unmerged"] = gen_fn(st, 1.0, p)
        fns[f"{p}/innerpissa_merged"] = gen_fn(None, 0.0, p, merged)
    times = interleaved(fns, reps)
    del merged
    A.remove(model)
    fit_pairs = pairs[0].subset(list(range(32)))
    base_p = "fp32"
    hook_fns = {"base": gen_fn(None, 0.0, base_p)}
    for name in ("pca", "mean_diff", "random", "sspace", "prompt"):
        s = get_steerer(name)
        s.fit(model, tok, fit_pairs)
        hook_fns[name] = gen_fn(s, 1.0, base_p)
    times.update({f"{base_p}/{k}" if k != "base" else f"{base_p}/base_again": v
                  for k, v in interleaved(hook_fns, reps).items()})
    lora = get_steerer("lora", train={"steps": 1, "n_val": 4, "batch_size": 4})
    lora.fit(model, tok, pairs[0].subset(list(range(8))), pairs[1].subset(list(range(4))))
    times.update({f"{base_p}/{k}": v for k, v in interleaved(
        {"base_lora_round": gen_fn(None, 0.0, base_p), "lora": gen_fn(lora, 1.0, base_p)}, reps).items()})
    tps = {k: n_tok / med(v) for k, v in times.items()}
    ratios = {}
    for p in PRECS:
        ratios[f"innerpissa_unmerged_{p}"] = tps[f"{p}/innerpissa_unmerged"] / tps[f"{p}/base"]
        ratios[f"innerpissa_merged_{p}"] = tps[f"{p}/innerpissa_merged"] / tps[f"{p}/base"]
    for name in ("pca", "mean_diff", "random", "sspace", "prompt"):
        ratios[name] = tps[f"fp32/{name}"] / tps["fp32/base_again"]
    ratios["lora"] = tps["fp32/lora"] / tps["fp32/base_lora_round"]
    return {"prompts": len(GEN_PROMPTS), "new_tokens": new_tokens, "coeff": 1.0, "seconds": times, "tokens_per_s": tps,
            "ratio_vs_base": ratios, "bf16_gen_ratio": tps["fp32/base"] / tps["bf16/base"],
            "note": "baselines in fp32, each against a base round interleaved with it; prompting's prompt is longer"}


def get_model(spec: str):  # noqa: ANN201
    """(model, tok): `tiny-llama` is the test suite's random model (a smoke test of this script), else load_model."""
    if spec == "tiny-llama":
        from innerpissa.testing import tiny_model

        return tiny_model("llama")
    return load_model(spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="a load_model spec, or tiny-llama to smoke-test the bench")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--eval-batches", type=int, default=3)
    ap.add_argument("--eval-rows", type=int, default=64)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--stride-rows", type=int, default=200, help="dd-honesty rows of the stride_error section")
    ap.add_argument("--name", default="speed", help="results file bench/results/NAME.json (a smoke run: another name)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    args = ap.parse_args()
    run_sections = [x.strip() for x in args.sections.split(",") if x.strip()]
    if bad := [x for x in run_sections if x not in SECTIONS]:
        print(f"error: unknown section {bad[0]!r}: use {', '.join(SECTIONS)}", file=sys.stderr)
        sys.exit(2)
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    torch.manual_seed(0)
    model, tok = get_model(args.model)
    pairs = make_pairs(load_concept("honesty"), seed=0)
    flags = cpu_flags()
    payload: dict = {
        "model": args.model + (" (SmolLM2-135M-Instruct Q4_1 dequantized to fp32)" if args.model == "smollm2-135m" else ""),
        "seed": 0, "sizes": vars(args),
        "cpu": {"bf16_flags_present": cpu_has_bf16(), "flags": sorted(f for f in FLAGS_OF_INTEREST if f in flags),
                "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "auto_resolves_to": resolve("auto", "cpu")},
    }
    old = RESULTS / f"{args.name}.json"
    if set(run_sections) != set(SECTIONS) and old.exists():
        prev = json.loads(old.read_text())
        payload.update({k: prev[k] for k in SECTIONS if k in prev and k not in run_sections})
        payload["phases"] = {k: v for k, v in prev.get("phases", {}).items() if not k.endswith("top_ops_bf16")}  # pre-profile keys
    phases: dict = payload.setdefault("phases", {})
    profiles: dict = phases.setdefault("profile", {})
    ran = {"date": machine()["date"], "git_commit": machine()["git_commit"], "loadavg_start": list(os.getloadavg())}

    def keep(name: str, block: dict, ph: dict | None = None) -> None:
        payload[name] = {**block, "ran": {**ran, "loadavg_end": list(os.getloadavg())}}
        if ph:
            profiles.update(ph.pop("profile", {}))
            phases.update(ph)

    if "matmul" in run_sections:
        keep("matmul", matmul_section(model, max(args.reps, 5)))
    if "train" in run_sections:
        keep("train", *train_section(model, tok, make_pairs(apply_data(load_concept("honesty"), DEFAULT_RECIPE), seed=0), args.reps))
    if "eval" in run_sections:
        keep("eval", *eval_section(model, tok, args.reps, args.eval_batches))
    if "stride" in run_sections:
        keep("stride_error", stride_section(model, tok, pairs, args.steps, args.stride_rows))
    if "generation" in run_sections:
        keep("generation", gen_section(model, tok, pairs, args.reps, args.new_tokens))
    if "effect" in run_sections:
        if "generation" in run_sections:
            model, tok = get_model(args.model)  # a clean model: the generation section leaves LoRA layers in place
        keep("effect", effect_section(model, tok, pairs, args.steps, args.eval_rows))
    missing = [k for k in ("train", "eval", "generation", "effect") if k not in payload]
    if missing:
        print(f"error: no {missing[0]} block in speed.json yet: run that section", file=sys.stderr)
        sys.exit(2)
    g = payload["generation"]["ratio_vs_base"]
    payload["headline"] = {
        "bf16_step_ratio": payload["train"]["bf16_step_ratio"], "target_bf16_step_ratio": 0.5,
        "bf16_matmul_ratio": payload.get("matmul", {}).get("bf16_ratio_model_weighted"),
        "bf16_step_ratio_bf16_attention": payload["train"].get("bf16_step_ratio_bf16_attention"),
        "bf16_step_ratio_autocast_recast": payload["train"].get("bf16_step_ratio_autocast_recast"),
        "bf16_eval_ratio": payload["effect"]["bf16_eval_ratio"], "target_bf16_eval_ratio": 0.5,
        "bf16_eval_ratio_same_scoring": payload["effect"].get("bf16_eval_ratio_same_scoring"),
        "shared_prefix_ratio_fp32": payload["effect"].get("shared_prefix_ratio_fp32"),
        "bf16_eval_ratio_rows": payload["effect"]["rows"],
        "eval_vs_bare": payload["eval"][f"eval_vs_bare_{resolve('auto', 'cpu')}"], "target_eval_vs_bare": 1.0,
        "eval_vs_bare_fp32": payload["eval"]["eval_vs_bare_fp32"], "eval_vs_bare_bf16": payload["eval"]["eval_vs_bare_bf16"],
        "nll_stride": payload["eval"].get("nll_stride_default", 2),
        "gen_merged_vs_base": g["innerpissa_merged_fp32"], "target_gen_merged_vs_base": 0.98,
        "gen_unmerged_vs_base": g["innerpissa_unmerged_fp32"], "target_gen_unmerged_vs_base": 0.85,
        "bf16_effect": payload["effect"]["effect_fp32_train_bf16_eval"],
        "fp32_effect": payload["effect"]["effect_fp32_train_fp32_eval"],
    }
    payload.update({k: v for k, v in payload["headline"].items() if not k.startswith("target")})
    payload["load"] = {"loadavg_start": load0, "loadavg_end": os.getloadavg(), "bench_wall_s": time.perf_counter() - t0,
                       "sections_run": run_sections}
    path = write(args.name, payload)
    print(path)
    for k, v in payload["headline"].items():
        print(k, v)


if __name__ == "__main__":
    machine()  # fail early if the bench helpers are broken
    main()
