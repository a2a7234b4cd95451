"""Sweeps: spec expansion, ablation presets, resume after interruption, failure isolation, the Ray executor."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from innerpissa import steerers
from innerpissa.concepts.fit_data import PAIRS_FILE, fit_pairs, pairs_sha256, seen_pairs
from innerpissa.experiments import run as run_mod
from innerpissa.experiments.ablations import PRESETS, apply_preset
from innerpissa.experiments.run import RunConfig
from innerpissa.steerers._ablations import ABLATION_RECIPE
from innerpissa.experiments.sweep import expand, load_spec, run_inprocess
from innerpissa.models import decoder_layers
from innerpissa.recipes import DEFAULT_RECIPE
from innerpissa.steerers.base import TensorSteerer, forward_hooks

REPO = Path(__file__).resolve().parents[1]
TINY_CONCEPT = {  # 10 pairs instead of the built-in ~1,000: fits take milliseconds on the tiny model
    "name": "honesty", "template": "Pretend you're {persona} person making statements about the world.",
    "positive": "an honest", "negative": "a dishonest", "val_fraction": 0.2,
    "suffixes": [{"items": ["The sky is", "I think that", "Water boils at", "The capital of France", "My favourite",
                            "In 1990,", "Cats are", "The truth is", "Honestly,", "The answer"]}],
}



@pytest.fixture(scope="session")
def concept(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("concept") / "honesty_small.yaml"
    path.write_text(yaml.safe_dump(TINY_CONCEPT))
    return str(path)


def _spec(tmp_path: Path, spec: dict) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


# --- spec expansion ---

def test_expand_counts_and_stable_hashes(tmp_path: Path) -> None:
    spec = {
        "model": "tiny-llama", "method": "innerpissa", "eval_limit": 8,
        "grid": {"params.adapter.r": [4, 8, 16], "params.loss.tau": [0.1, 0.5]},
        "lists": [{"params.train.lr": 0.001}, {"params.train.lr": 0.01}],
        "seeds": [0, 1, 2], "presets": ["full", "no_rotate_v"],
    }
    cfgs = expand(load_spec(_spec(tmp_path, spec)))
    assert len(cfgs) == 2 * 3 * 2 * 2 * 3  # lists × grid × presets × seeds, all distinct
    hashes = [c.content_hash() for c in cfgs]
    assert len(set(hashes)) == len(cfgs)
    assert hashes == [c.content_hash() for c in expand(load_spec(_spec(tmp_path, spec)))]  # same order, same hashes
    # the hash is the sha256 of the canonical JSON: recompute it independently
    c = cfgs[5]
    d = {k: v for k, v in c.model_dump(mode="json").items() if c.kl is not None or k not in ("kl", "kl_stat")}
    if c.precision == "auto":  # `auto` is not hashed (like the device)
        del d["precision"]
    if c.method == "innerpissa":  # plus the recipe resolved onto the config defaults
        d["resolved"] = c.resolved_configs()
    assert c.content_hash() == hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]
    # and is independent of key order inside params
    p = c.params
    shuffled = {k: dict(reversed(list(v.items()))) if isinstance(v, dict) else v for k, v in reversed(list(p.items()))}
    assert RunConfig(**{**c.model_dump(), "params": shuffled}).content_hash() == c.content_hash()
    # every combination present exactly once
    combos = {(c.params["adapter"]["r"], c.params["loss"]["tau"], c.params["train"]["lr"], c.preset, c.seed) for c in cfgs}
    assert len(combos) == len(cfgs)
    nrv = [c for c in cfgs if c.preset == "no_rotate_v"]
    assert all(c.params["adapter"]["rotate_v"] is False and c.params["adapter"]["r"] in (4, 8, 16) for c in nrv)


def test_expand_deterministic_methods_keep_one_seed_and_dedupe(tmp_path: Path) -> None:
    spec = {"model": "tiny-llama", "lists": [{"method": "mean_diff"}, {"method": "random"}, {"method": "mean_diff"}],
            "seeds": [3, 4, 5]}
    cfgs = expand(load_spec(_spec(tmp_path, spec)))
    assert [(c.method, c.seed) for c in cfgs] == [("mean_diff", 3), ("random", 3), ("random", 4), ("random", 5)]
    # deterministic methods share one fit whatever the seed; seeded ones do not
    md = RunConfig(method="mean_diff", seed=0)
    assert md.fit_hash() == md.model_copy(update={"seed": 7}).fit_hash()
    rnd = RunConfig(method="random", seed=0)
    assert rnd.fit_hash() != rnd.model_copy(update={"seed": 7}).fit_hash()
    assert rnd.model_copy(update={"seed": 7}).steerer_params() == {"seed": 7}
    ip = RunConfig(method="innerpissa", seed=2, params={"train": {"lr": 0.01}})
    assert ip.steerer_params() == {"train": {"lr": 0.01, "seed": 2}, "recipe": DEFAULT_RECIPE}  # always explicit


def test_presets_are_config_deltas() -> None:
    base = RunConfig(model="tiny-llama", params={"recipe": "reprpo-v0", "train": {"steps": 5}})
    assert apply_preset(base, "full").params == base.params
    d = apply_preset(base, "depth_0.5")
    assert d.params == {"recipe": "reprpo-v0", "train": {"steps": 5}, "adapter": {"layer_range": [0.3, 0.5]},
                        "loss": {"loss_layer_frac": 0.5}}
    assert (PRESETS["depth_0.5"].group, PRESETS["depth_0.5"].value) == ("depth", 0.5)
    nosvd = apply_preset(base, "no_svd")  # LoRA, trained with the recipe's loss and train settings
    assert (nosvd.method, nosvd.preset, nosvd.params) == ("lora", "no_svd", {"train": {"steps": 5}})
    anti = apply_preset(RunConfig(params={"recipe": "antipasto", "train": {"lr": 0.01}}), "no_svd").params
    assert anti["loss"]["sep_kind"] == "antiparallel" and list(anti["layer_range"]) == [0.1, 0.45]
    assert anti["train"]["lr"] == 0.01 and anti["train"]["grad_clip"] == 1.0 and "recipe" not in anti
    # every preset's delta names real config fields (validated by RunConfig)
    for name in PRESETS:
        apply_preset(base, name)
    assert len({apply_preset(base, n).content_hash() for n in PRESETS}) == len(PRESETS)


def test_every_preset_changes_the_resolved_ablation_config() -> None:
    """Guards against presets that silently become no-ops when a default in innerpissa.config or the recipe they
    are written for (ABLATION_RECIPE, the one sweeps/ablations.yaml runs) changes."""
    base = RunConfig(params={"recipe": ABLATION_RECIPE})

    def resolved(cfg: RunConfig) -> tuple:
        return cfg.method, cfg.resolved_configs() if cfg.method == "innerpissa" else cfg.params

    default = resolved(base)
    assert resolved(apply_preset(base, "full")) == default
    for name in PRESETS:
        if name != "full":
            assert resolved(apply_preset(base, name)) != default, name
    spec = yaml.safe_load((REPO / "sweeps" / "ablations.yaml").read_text())
    assert spec["params"]["recipe"] == ABLATION_RECIPE


@pytest.mark.parametrize("spec, match", [
    ({"method": "innerpissa", "presets": ["no_such_preset"]}, "unknown ablation preset 'no_such_preset'"),
    ({"method": "innerpissa", "grid": {"params.adapter.rotat_v": [True]}}, r"unknown config path\(s\) adapter.rotat_v"),
    ({"method": "innerpissa", "grid": {"params.optimizer.lr": [1]}}, "unknown config path 'optimizer'"),
    ({"method": "innerpissa", "grid": {"learning_rate": [1]}}, "unknown sweep key 'learning_rate'"),
    ({"method": "innerpissa", "epochs": 3}, r"unknown key\(s\) \['epochs'\]"),
    ({"method": "innerpissa", "seed": 3}, r"unknown key\(s\) \['seed'\]"),
    ({"method": "pca", "presets": ["no_rotate_v"]}, "delta from method innerpissa"),
    ({"method": "pca", "coeffs": [-1, 1]}, "must include 0"),
    ({"method": "pca", "seeds": []}, "seeds"),
    ({"method": "innerpissa", "grid": {"params.train.steps": [10, 0]}}, "train.steps: Input should be greater than 0"),
    ({"method": "lora", "params": {"loss": {"tau": -1}}}, "loss.tau: Input should be greater than or equal to 0"),
    ({"method": "pca", "grid": {"params.layers": []}}, "have no values"),
    ({"method": "pca", "grid": {"params.layers": 3}}, "grid.params.layers: Input should be a valid list"),
])
def test_bad_specs_fail_with_one_line_errors(tmp_path: Path, spec: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match) as e:
        expand(load_spec(_spec(tmp_path, spec)))
    assert "\n" not in str(e.value)


def test_example_specs_expand() -> None:
    specs = sorted((REPO / "sweeps").glob("*.yaml"))
    assert specs
    counts = {p.stem: len(expand(load_spec(p))) for p in specs}
    assert counts["ablations"] == len(PRESETS)
    # full_seeds' seed-0 run is the very run of ablations' `full` preset (shared, not recomputed)
    full = {c.content_hash() for c in expand(load_spec(REPO / "sweeps" / "ablations.yaml")) if c.preset == "full"}
    assert full < {c.content_hash() for c in expand(load_spec(REPO / "sweeps" / "full_seeds.yaml"))}


# --- execution: a test-only steerer registered by monkeypatching the registry ---

FITS: list[int] = []


class ShiftSteerer(TensorSteerer):
    """Test-only: adds c·v to decoder layer 1's output (v seeded); `fail=True` makes fit raise."""

    name = "test_shift"

    def __init__(self, seed: int = 0, fail: bool = False) -> None:
        super().__init__(seed=seed, fail=fail)

    def fit(self, model, tokenizer, pairs, val=None) -> None:
        FITS.append(self.hparams["seed"])
        if self.hparams["fail"]:
            raise RuntimeError("planned failure in fit")
        g = torch.Generator().manual_seed(self.hparams["seed"])
        self.tensors = {"v": torch.randn(model.config.hidden_size, generator=g)}

    def steer(self, model, c: float):
        layer, v = decoder_layers(model)[1], self.tensors["v"]

        def hook(mod, args, out):
            return (out[0] + c * v, *out[1:]) if isinstance(out, tuple) else out + c * v

        return forward_hooks(lambda: [layer.register_forward_hook(hook)])


@pytest.fixture
def shift_steerer(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    real_get, real_available = steerers.get_steerer, steerers.available

    def get(name: str, **hp):
        return ShiftSteerer(**hp) if name == "test_shift" else real_get(name, **hp)

    monkeypatch.setattr(steerers, "get_steerer", get)
    monkeypatch.setattr(steerers, "available", lambda: real_available() + ["test_shift"])
    FITS.clear()
    return FITS


@pytest.fixture
def count_evals(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    from innerpissa.experiments import evaluate

    calls: list[str] = []
    real = evaluate.evaluate_run

    def counted(*args, **kw):
        calls.append("eval")
        return real(*args, **kw)

    monkeypatch.setattr(evaluate, "evaluate_run", counted)
    return calls


def _cfgs(concept: str, seeds, **kw) -> list[RunConfig]:
    return [RunConfig(model="tiny-llama", concept=concept, method="test_shift", eval_limit=6, max_length=96, seed=s,
                      pmass_min=0.0, **kw)
            for s in seeds]


def test_resume_after_interrupted_sweep_runs_only_the_rest(tmp_path: Path, concept, shift_steerer, count_evals, monkeypatch,
                                                           capsys) -> None:
    cfgs = _cfgs(concept, [0, 1, 2, 3])
    from innerpissa.experiments import evaluate

    counted = evaluate.evaluate_run

    def interrupt_third(*args, **kw):
        if len(count_evals) == 2:
            count_evals.append("interrupted")
            raise KeyboardInterrupt  # like Ctrl-C / a killed job: not recorded as a failure
        return counted(*args, **kw)

    monkeypatch.setattr(evaluate, "evaluate_run", interrupt_third)
    with pytest.raises(KeyboardInterrupt):
        run_inprocess(cfgs, tmp_path)
    done = [(tmp_path / "runs" / c.content_hash() / "DONE").is_file() for c in cfgs]
    assert done == [True, True, False, False]
    partial = tmp_path / "runs" / cfgs[2].content_hash()
    assert partial.is_dir() and not (partial / "error.json").exists()
    assert shift_steerer == [0, 1, 2]  # seed 2 was fitted (and cached) before the interruption

    monkeypatch.setattr(evaluate, "evaluate_run", counted)
    count_evals.clear()
    shift_steerer.clear()
    capsys.readouterr()
    summary = run_inprocess(cfgs, tmp_path)
    lines = capsys.readouterr().err.splitlines()  # a log, not only a terminal's bar, says what runs and how far it is
    assert [line.strip() for line in lines if " of 2" in line or "to do" in line] == [
        "2 run(s) to do (2 finished earlier, skipped)", "run 1 of 2: test_shift seed 2", "run 2 of 2: test_shift seed 3"]
    assert summary.skipped == [c.content_hash() for c in cfgs[:2]]
    assert summary.done == [c.content_hash() for c in cfgs[2:]] and not summary.failed
    assert len(count_evals) == 2  # only the partial and the missing run were evaluated
    assert shift_steerer == [3]  # the partial run reused its cached fit; only seed 3 was fitted
    for c in cfgs:
        d = tmp_path / "runs" / c.content_hash()
        assert {"DONE", "config.json", "scores.parquet", "summary.json"} <= {p.name for p in d.iterdir()}
        conf = json.loads((d / "config.json").read_text())
        assert conf["run"] == c.model_dump(mode="json") and conf["fit"]["fit_hash"] == c.fit_hash()
    reused = json.loads((tmp_path / "runs" / cfgs[2].content_hash() / "config.json").read_text())["fit"]["reused"]
    assert reused is True
    # a third pass does nothing
    again = run_inprocess(cfgs, tmp_path)
    assert len(again.skipped) == 4 and not again.done and len(count_evals) == 2


def test_failed_run_is_recorded_and_does_not_stop_the_sweep(tmp_path: Path, concept, shift_steerer) -> None:
    good = _cfgs(concept, [0, 1])
    bad = _cfgs(concept, [0], params={"fail": True})[0]
    logged = []

    def flaky_logger(cfg, path):  # e.g. W&B down: must not turn a finished run into a failure
        logged.append(path.name)
        raise ConnectionError("logging backend unreachable")

    summary = run_inprocess([good[0], bad, good[1]], tmp_path, on_done=flaky_logger)
    assert logged == [good[0].content_hash(), good[1].content_hash()]
    assert summary.done == [good[0].content_hash(), good[1].content_hash()]
    assert list(summary.failed) == [bad.content_hash()]
    assert "RuntimeError: planned failure in fit" in summary.failed[bad.content_hash()]
    err = json.loads((tmp_path / "runs" / bad.content_hash() / "error.json").read_text())
    assert err["type"] == "RuntimeError" and err["message"] == "planned failure in fit"
    assert "in fit" in err["traceback"] and err["run"]["params"] == {"fail": True}
    assert not (tmp_path / "runs" / bad.content_hash() / "DONE").exists()
    assert not (tmp_path / "fits" / bad.fit_hash()).exists()  # a failed fit leaves no cache entry
    assert json.loads((tmp_path / "sweep_summary.json").read_text())["failed"] == summary.failed
    rendered = summary.table()
    assert rendered.row_count == 3
    # a rerun retries only the failed run
    again = run_inprocess([good[0], bad, good[1]], tmp_path)
    assert len(again.skipped) == 2 and list(again.failed) == [bad.content_hash()]


def test_model_cache_reuses_clean_models_and_evicts_dirty_ones() -> None:
    a, _ = run_mod.load_cached("tiny-llama")
    assert run_mod.load_cached("tiny-llama")[0] is a
    with torch.no_grad():  # transformers installs its own output-capturing hooks here: not a dirty model
        a(torch.tensor([[1, 2, 3]]), output_hidden_states=True)
    assert run_mod.load_cached("tiny-llama")[0] is a
    handle = decoder_layers(a)[0].register_forward_hook(lambda *args: None)  # a leaked hook
    b, _ = run_mod.load_cached("tiny-llama")
    handle.remove()
    assert b is not a
    with torch.no_grad():
        next(b.parameters()).add_(1.0)  # weights changed in place (e.g. a merge)
    assert run_mod.load_cached("tiny-llama")[0] is not b


@pytest.mark.ray
def test_ray_executor_on_local_ray(tmp_path: Path, concept) -> None:
    from innerpissa.experiments.sweep import run_ray

    common = dict(model="tiny-llama", concept=concept, eval_limit=6, max_length=96, pmass_min=0.0)
    cfgs = [RunConfig(method=m, seed=s, **common) for m, s in (("random", 0), ("random", 1), ("mean_diff", 0))]
    bad = RunConfig(method="mean_diff", params={"layers": [99]}, **common)
    summary = run_ray([*cfgs, bad], tmp_path, num_cpus=2)
    assert sorted(summary.done) == sorted(c.content_hash() for c in cfgs)
    assert list(summary.failed) == [bad.content_hash()] and "out of range" in summary.failed[bad.content_hash()]
    for c in cfgs:
        assert (tmp_path / "runs" / c.content_hash() / "DONE").is_file()
        assert (tmp_path / "fits" / c.fit_hash() / "DONE").is_file()
    assert json.loads((tmp_path / "runs" / bad.content_hash() / "error.json").read_text())["type"] == "ValueError"
    again = run_ray(cfgs, tmp_path, num_cpus=2)
    assert len(again.skipped) == 3 and not again.done


def test_trained_params_are_checked_per_method() -> None:
    from innerpissa.steerers.peft_lora import PeftSteerer

    # the flat LoRA fields a run accepts are the peft steerers' params, besides their loss/train sections
    flat = set(PeftSteerer.Params.model_fields) - set(PeftSteerer.sections)
    assert flat == {"r", "alpha", "target_modules", "layer_range"}
    RunConfig(method="lora", params={"r": 4, "layer_range": [0.2, 0.4], "train": {"steps": 3}})
    with pytest.raises(ValueError, match="unknown config path 'adapter' for method lora"):
        RunConfig(method="lora", params={"adapter": {"r": 4}})  # would be silently swallowed by **extra
    with pytest.raises(ValueError, match="unknown config path 'r' for method innerpissa"):
        RunConfig(method="innerpissa", params={"r": 4})
    # no_svd keeps loss, train, modules and layer range; drops the InnerPiSSA-only fields
    ip = RunConfig(params={"recipe": "reprpo-v0", "adapter": {"r": 32, "rotate_v": False, "target_modules": ["o_proj"], "layer_range": [0.2, 0.6]},
                           "loss": {"tau": 0.3}, "train": {"steps": 7}})
    lo = apply_preset(ip, "no_svd")
    assert lo.params == {"loss": {"tau": 0.3}, "train": {"steps": 7}, "target_modules": ["o_proj"], "layer_range": [0.2, 0.6]}


def test_trained_methods_run_and_never_leak_into_the_next_run(tmp_path: Path, concept) -> None:
    from innerpissa.adapter import adapter_layers

    common = dict(model="tiny-llama", concept=concept, eval_limit=6, max_length=96, pmass_min=0.0)
    train = {"steps": 2, "batch_size": 4, "eval_every": 1, "n_val": 2}
    ip = RunConfig(method="innerpissa", params={"adapter": {"r": 4}, "loss": {"loss_r": 4}, "train": train}, **common)
    lora = apply_preset(ip, "no_svd")
    ip_other_rows = ip.model_copy(update={"eval_limit": 8})  # same fit, different evaluation
    summary = run_inprocess([ip, lora, ip_other_rows], tmp_path)
    assert not summary.failed and len(summary.done) == 3
    fits = [json.loads((tmp_path / "runs" / c.content_hash() / "config.json").read_text())["fit"] for c in (ip, lora, ip_other_rows)]
    assert [f["reused"] for f in fits] == [False, False, True] and fits[0]["fit_hash"] == fits[2]["fit_hash"]
    for c in (ip, ip_other_rows):  # each run shows its fit's training curve, a reused fit's too
        assert (tmp_path / "runs" / c.content_hash() / "loss_curve.png").stat().st_size > 1000
    model, _ = run_mod.load_cached("tiny-llama")
    assert not adapter_layers(model)  # the adapter-carrying model was evicted, the cached one is clean
    scores = {c.eval_limit: pd.read_parquet(tmp_path / "runs" / c.content_hash() / "scores.parquet") for c in (ip, ip_other_rows)}
    a, b = (s[s.coeff == 1.0].set_index("row_id")["logratio"] for s in scores.values())
    base = scores[6][scores[6].coeff == 0.0].set_index("row_id")["logratio"]
    shared = a.index.intersection(b.index)
    assert len(shared) == 6 and (a - base).abs().max() > 5e-4  # the adapter does steer
    assert np.allclose(a[shared], b[shared], atol=2e-5)  # and the fit reloaded from ROOT/fits steers identically


def test_wandb_without_the_package_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from innerpissa.experiments.sweep import wandb_logger

    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` fail whether or not it is installed
    with pytest.raises(ValueError, match=r"pip install 'innerpissa\[wandb\]'"):
        wandb_logger(tmp_path)


def test_n_pairs_subset_and_stale_fit_cache(tmp_path: Path, shift_steerer) -> None:
    spec = tmp_path / "c.yaml"
    spec.write_text(yaml.safe_dump(TINY_CONCEPT))
    full, sub = _cfgs(str(spec), [0])[0], _cfgs(str(spec), [0], n_pairs=3)[0]
    assert full.fit_hash() != sub.fit_hash()
    assert "n_pairs" not in full.fit_key()  # unset fields leave existing fit hashes unchanged
    train, val = fit_pairs(sub.concept, sub.n_pairs)
    all_train, all_val = fit_pairs(full.concept)
    assert len(train) == 3 and set(train.suffixes) < set(all_train.suffixes) and val == all_val
    run_inprocess([sub], tmp_path)
    fit = json.loads((tmp_path / "fits" / sub.fit_hash() / "fit.json").read_text())
    assert fit["n_train_pairs"] == 3 and fit["pairs_sha256"] == pairs_sha256(train, val)
    record = json.loads((tmp_path / "fits" / sub.fit_hash() / PAIRS_FILE).read_text())
    assert {k: record[k] for k in ("pair_seed", "n_pairs", "n_train", "n_val", "sha256")} == {
        "pair_seed": 0, "n_pairs": 3, "n_train": 3, "n_val": len(val), "sha256": fit["pairs_sha256"]}
    seen = seen_pairs(record)  # rebuilt from the record alone: exactly the pairs the fit saw, train then val
    assert seen.suffixes == train.suffixes + val.suffixes
    # the concept file changes under the same name: the cached fit must not be reused silently
    spec.write_text(yaml.safe_dump({**TINY_CONCEPT, "positive": "a truthful"}))
    rerun = sub.model_copy(update={"eval_limit": 8})
    summary = run_inprocess([rerun], tmp_path)
    assert "was made on other pairs" in summary.failed[rerun.content_hash()]


def test_samples_are_steered_generations(tmp_path: Path, concept, shift_steerer) -> None:
    cfg = _cfgs(concept, [0], samples=2)[0]
    run_inprocess([cfg], tmp_path)
    samples = pd.DataFrame(json.loads((tmp_path / "runs" / cfg.content_hash() / "samples.json").read_text()))
    assert sorted(samples["coeff"]) == [-1.0, -1.0, 0.0, 0.0, 1.0, 1.0] and samples["prompt"].nunique() == 2
    scores = pd.read_parquet(tmp_path / "runs" / cfg.content_hash() / "scores.parquet")
    assert set(samples["prompt"]) < {m[-2]["content"] for m in run_mod.eval_sets(cfg)[0].rows["messages"]}
    by_c = samples.groupby("coeff")["completion"].apply(tuple)
    assert by_c[1.0] != by_c[0.0] or by_c[-1.0] != by_c[0.0]  # steering changed some greedy completion
    assert len(scores) == 3 * 6


def test_editing_a_recipe_changes_the_fit_and_run_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cached fit must never be reused after its recipe (or a config default) changed."""
    from innerpissa import recipes

    cfg = RunConfig(method="innerpissa", params={"recipe": "reprpo-v0"})
    before = (cfg.fit_hash(), cfg.content_hash())
    edited = recipes.RECIPES["reprpo-v0"].model_copy(update={"train": {"steps": 25}})
    monkeypatch.setitem(recipes.RECIPES, "reprpo-v0", edited)
    after = (cfg.fit_hash(), cfg.content_hash())
    assert before[0] != after[0] and before[1] != after[1]


def test_an_interrupted_innerpissa_fit_resumes_from_its_checkpoint(tmp_path: Path, concept, monkeypatch) -> None:
    """A fit killed after its first checkpoint continues from it on the next call (the checkpoint lives under
    ROOT/checkpoints/<fit-hash>/, outside the ignored fits/) and gives the adapter of an uninterrupted fit."""
    from innerpissa.loop import Loop

    cfg = RunConfig(model="tiny-llama", concept=concept, method="innerpissa", n_pairs=8,
                    params={"recipe": "reprpo-v0", "train": {"steps": 4, "checkpoint_every": 2, "batch_size": 4}})
    model, tok = run_mod.load_cached(cfg.model)
    train, val = fit_pairs(cfg.concept, cfg.n_pairs, recipe=cfg.recipe())
    whole, info = run_mod.fit_cached(cfg, model, tok, train, val, tmp_path / "a")
    assert not info["resumed_from_checkpoint"] and not (tmp_path / "a" / "checkpoints" / cfg.fit_hash()).exists()

    class Killed(Exception):
        pass

    saved = Loop.save_checkpoint

    def save_then_die(self, step, result):
        saved(self, step, result)
        raise Killed

    monkeypatch.setattr(Loop, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        run_mod.fit_cached(cfg, model, tok, train, val, tmp_path / "b")
    assert (tmp_path / "b" / "checkpoints" / cfg.fit_hash() / "checkpoint.json").is_file()
    assert not (tmp_path / "b" / "fits" / cfg.fit_hash()).exists()
    steps = []

    def counted(self, step, result):
        steps.append(step)
        saved(self, step, result)

    monkeypatch.setattr(Loop, "save_checkpoint", counted)
    resumed, info = run_mod.fit_cached(cfg, model, tok, train, val, tmp_path / "b")
    assert info["resumed_from_checkpoint"] and not (tmp_path / "b" / "checkpoints" / cfg.fit_hash()).exists()
    assert steps and min(steps) > 2  # continued after the first checkpoint's step instead of starting over
    for s in (whole, resumed):
        s.save(tmp_path / f"saved_{id(s)}")
    from safetensors.torch import load_file

    ta, tb = (load_file(next((tmp_path / f"saved_{id(s)}").glob("*.safetensors"))) for s in (whole, resumed))
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
