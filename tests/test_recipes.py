"""Named recipes: resolution and overrides, each one trains on a tiny model, epochs/early stopping, data choices."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from innerpissa.adapter import trainable_parameters
from innerpissa.concepts import load_concept, make_pairs
from innerpissa.config import AdapterConfig, LossConfig, TrainConfig
from innerpissa.recipes import DEFAULT_RECIPE, RECIPES, apply_data, get_recipe, resolve
from innerpissa.testing import save_tiny_model, tiny_model, tiny_tokenizer
from innerpissa import loss as L
from innerpissa.train import Trainer

SMALL_A = {"r": 8}
SMALL_L = {"loss_r": 8}
SMALL_T = {"n_train": 12, "n_val": 4, "batch_size": 4, "grad_accum": 1, "eval_every": 1, "checkpoint_every": 1,
           "max_length": 40}


def test_resolve_applies_the_recipe_then_the_overrides():
    a, l, t = resolve("antipasto")
    assert (l.sep_kind, l.coh_kind, l.coh_positions, l.mono_kind) == ("antiparallel", "tv", "all", "entropy")
    assert (l.loss_layer_frac, l.warmup, t.grad_clip, t.steps, a.dims) == (0.5, 0.2, 1.0, None, "data")
    a, l, t = resolve("antipasto", {"r": 4}, {"coh_weight": 2.0}, {"lr": 1e-2})
    assert (a.r, l.coh_weight, t.lr, l.mono_weight) == (4, 2.0, 1e-2, 30.0)  # overrides win, the rest stays
    assert resolve("reprpo-v0") == (AdapterConfig(), LossConfig(), TrainConfig())  # today's objective = defaults
    with pytest.raises(ValueError, match="unknown recipe 'nope'.*antipasto"):
        get_recipe("nope")
    with pytest.raises(ValueError, match="loss.coh_wieght"):
        resolve("seed", loss={"coh_wieght": 1.0})


def test_recipe_data_overrides_use_all_four_files_and_an_empty_system_turn():
    spec = load_concept("honesty")
    assert apply_data(spec, "reprpo-v0") is spec
    tr, va = make_pairs(apply_data(spec, "antipasto"))
    assert tr.system == "none" and {s["source"] for s in apply_data(spec, "antipasto").model_dump()["suffixes"]} == {
        "all_truncated_outputs", "code_questions", "reasoning", "true_facts"}
    assert any(s.startswith("[INST]") for s in tr.suffixes + va.suffixes)  # code_questions is in
    # a researcher's own suffixes (inline or a file) and an explicit system prompt are never replaced
    own = spec.model_copy(update={"suffixes": [{"items": ["I think", "Well,"]}]})
    own = type(spec)(**{**own.model_dump(), "system_prompt": "model"})
    kept = apply_data(own, "antipasto")
    assert [s.items for s in kept.suffixes] == [["I think", "Well,"]] and kept.system_prompt == "model"


def test_system_prompt_choice_is_explicit():
    tok = tiny_tokenizer()
    tr, _ = make_pairs(load_concept("honesty"))
    from dataclasses import replace

    from innerpissa.batching import chat_text

    text = {s: chat_text(tok, replace(tr, system=s).messages(0, True))[0] for s in ("model", "none", "template")}
    assert "You are a helpful assistant." in text["model"]  # the template's default sneaks in
    assert "helpful assistant" not in text["none"] and "<|im_start|>system\n<|im_end|>" in text["none"]
    assert text["template"].startswith(f"<|im_start|>system\n{tr.positive_prompts[0]}<|im_end|>")
    with pytest.raises(ValueError, match="unknown system prompt choice"):
        replace(tr, system="persona")


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_trains_finitely_and_keeps_c0_exact(name):
    a, l, t = resolve(name, SMALL_A, SMALL_L, {**SMALL_T, "steps": 3})
    tr, va = make_pairs(apply_data(load_concept("honesty"), name))
    model, tok = tiny_model()
    ids = torch.randint(0, 1000, (1, 6))
    base = model(ids).logits
    trainer = Trainer(model, tok, tr, va, a, l, t, progress=False)
    res = trainer.run()
    assert len(res.history) == 3 and all(math.isfinite(r["loss"]) for r in res.history)
    assert torch.equal(model(ids).logits, base)  # adapter attached, c = 0: exactly the base model
    _, shift = trainer.objective.validate(trainer.objective.u)  # the final adapter, again: +1 moves held-out pairs up
    assert shift > 0 and res.val_shift == pytest.approx(shift, rel=1e-4)


def test_epochs_set_the_step_count_and_early_stopping_ends_the_run():
    tr, va = make_pairs(load_concept("honesty"))
    model, tok = tiny_model()
    t = TrainConfig(**{**SMALL_T, "steps": None, "epochs": 2, "max_steps": None})
    assert Trainer(model, tok, tr, va, AdapterConfig(r=8), LossConfig(loss_r=8), t, progress=False).objective.total_steps == 6
    t = TrainConfig(**{**SMALL_T, "steps": None, "epochs": 2, "max_steps": 5})
    assert Trainer(model, tok, tr, va, AdapterConfig(r=8), LossConfig(loss_r=8), t, progress=False).objective.total_steps == 5
    # min_delta so large that only the first validation counts as a best: stops after `patience` misses
    t = TrainConfig(**{**SMALL_T, "steps": None, "epochs": 10, "patience": 2, "min_delta": 1e9})
    model, tok = tiny_model()
    res = Trainer(model, tok, tr, va, AdapterConfig(r=8), LossConfig(loss_r=8), t, progress=False).run()
    assert len(res.history) == 3 and res.best_step == 1


def test_adapters_before_loss_is_enforced():
    tr, va = make_pairs(load_concept("honesty"))
    model, tok = tiny_model()  # 4 layers: loss layer at depth 0.5 is layer 2
    with pytest.raises(ValueError, match="reach the loss layer 2"):
        Trainer(model, tok, tr, va, AdapterConfig(r=8, layer_range=(0.0, 1.0)),
                LossConfig(loss_r=8, loss_layer_frac=0.5, adapters_before_loss=True), TrainConfig(**SMALL_T))


def test_antipasto_resume_is_bit_identical(tmp_path):
    """Warm-up, clipping and the live reference depend only on the step: a resumed run matches an unbroken one."""
    a, l, t = resolve("antipasto", SMALL_A, SMALL_L, {**SMALL_T, "steps": None, "epochs": 2, "eval_every": 2,
                                                      "checkpoint_every": 2})
    tr, va = make_pairs(apply_data(load_concept("honesty"), "antipasto"))

    def run(d, **kw):
        model, tok = tiny_model()
        Trainer(model, tok, tr, va, a, l, t, ckpt_dir=d, progress=False).run(**kw)
        return [p.detach().clone() for p in trainable_parameters(model)]

    want = run(tmp_path / "a")
    run(tmp_path / "b", stop_after=2)
    got = run(tmp_path / "b", resume=True)
    assert all(torch.equal(x, y) for x, y in zip(want, got))


def test_cli_records_the_recipe_and_writes_the_loss_curve(run_cli, tmp_path):
    model, tok = save_tiny_model(tmp_path / "m")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"recipe": "seed", "adapter": SMALL_A, "loss": SMALL_L,
                                   "train": {**SMALL_T, "steps": 2}}))
    code, _, err = run_cli("train", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "o"),
                           "--config", str(cfg), "--recipe", "antipasto")  # the flag wins over the YAML key
    assert code == 0, err
    params = json.loads((tmp_path / "o" / "steerer.json").read_text())["params"]
    assert params["recipe"] == "antipasto" and params["loss"]["sep_kind"] == "antiparallel"
    assert (tmp_path / "o" / "loss_curve.png").stat().st_size > 1000
    code, _, err = run_cli("train", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "x"), "--recipe", "nope")
    assert code == 2 and "unknown recipe 'nope'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
    assert DEFAULT_RECIPE in RECIPES


def test_train_help_states_each_recipes_default_length(run_cli):
    """`train --help` spells out every recipe's length (written out in cli/train.py so --help stays fast); it must match
    the recipes."""
    from innerpissa.cli.train import TRAIN_STEPS_HELP

    for name in RECIPES:
        t = resolve(name)[2]
        length = (f"{t.steps} steps" if t.steps else
                  f"{t.epochs:g} epochs, at most {t.max_steps} steps" + (", early stopping" if t.patience else ""))
        assert f"{name}: {length}" in TRAIN_STEPS_HELP, name
    code, out, _ = run_cli("train", "--help")
    assert code == 0 and "antipasto: 2 epochs, at most 60 steps" in " ".join(out.replace("│", " ").split())


def test_loss_curve_marks_the_warmup_and_merges_equal_terms(tmp_path):
    """antipasto ramps its constraints in over 40 % of 5 steps here: ramp = step / 2, so steps 1-2 (0-based 0, 1) are
    the warm-up; its antiparallel term is logged as sep_pos = sep_neg, drawn once under both names (on this tiny
    model the TV barrier stays inactive, coh_pos = coh_neg = 0, and is merged the same way)."""
    from innerpissa.experiments.figures import loss_curve, loss_term_groups, warmup_steps

    a, l, t = resolve("antipasto", SMALL_A, {**SMALL_L, "warmup": 0.4}, {**SMALL_T, "steps": 5})
    tr, va = make_pairs(apply_data(load_concept("honesty"), "antipasto"))
    model, tok = tiny_model()
    history = Trainer(model, tok, tr, va, a, l, t, progress=False).run().history
    assert [row["ramp"] for row in history] == [L.warmup_factor(s, 5, 0.4) for s in range(5)] == [0, 0.5, 1, 1, 1]
    import pandas as pd

    df = pd.DataFrame(history)
    assert warmup_steps(df) == 2 and warmup_steps(df.assign(ramp=1.0)) is None and warmup_steps(df.drop(columns="ramp")) is None
    assert (df["coh_pos"] == 0).all() and loss_term_groups(df) == [["sep_pos", "sep_neg"], ["coh_pos", "coh_neg"], ["mono"]]
    assert loss_term_groups(df.assign(sep_neg=df["sep_pos"] + 1))[:2] == [["sep_pos"], ["sep_neg"]]
    assert loss_curve(history, tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_position_reference_is_cached_exactly():
    """coh_positions='all' with the NLL barrier uses the cache: the cached per-token NLL and coherence mask of
    a batch equal a fresh frozen-model pass over every position (prompt included, padding excluded)."""
    tr, va = make_pairs(load_concept("honesty"))
    model, tok = tiny_model()
    t = Trainer(model, tok, tr, va, AdapterConfig(r=8), LossConfig(loss_r=8, coh_positions="all"),
                TrainConfig(**{**SMALL_T, "steps": 2}), progress=False)
    o = t.objective
    assert not o.live_ref
    t.prepare()
    idx = o.batches[0]
    b = o.encode(o.train_pairs, idx)
    cached, fresh = o._ref_for(idx, o.cache, o.train_pairs, o._span(b)), o._live_reference(b)
    assert cached.nll.shape == fresh.nll.shape == (len(b), b.input_ids.shape[1] - 1)
    assert torch.equal(cached.coh_mask, fresh.coh_mask) and torch.equal(cached.mask, fresh.mask)
    assert cached.coh_mask.sum() > cached.mask.sum()  # the prompt tokens are covered, not only the suffix
    assert torch.allclose(cached.nll * cached.coh_mask, fresh.nll * fresh.coh_mask, atol=1e-5)


def test_recipe_aliases_become_labelled_rows_against_the_plain_default() -> None:
    """`innerpissa:<recipe>` names a run of InnerPiSSA under that recipe; in tables the default run keeps the plain
    name (the paired reference) and each recipe run is labelled by its recipe."""
    import json

    import pandas as pd

    from innerpissa.experiments.compare import compare_configs
    from innerpissa.experiments.tables import variant_labels

    cfgs = compare_configs(["innerpissa", "innerpissa:reprpo-v0", "innerpissa:seed", "pca", f"innerpissa:{DEFAULT_RECIPE}"],
                           1, "tiny-llama", "honesty", ["dd-honesty"], [-1.0, 0.0, 1.0])
    # the recipe is always explicit in the stored config, so a run keeps its meaning if the default changes
    assert [(c.method, c.params) for c in cfgs] == [
        ("innerpissa", {"recipe": DEFAULT_RECIPE}), ("innerpissa", {"recipe": "reprpo-v0"}),
        ("innerpissa", {"recipe": "seed"}), ("pca", {}), ("innerpissa", {"recipe": DEFAULT_RECIPE})]
    assert cfgs[0].content_hash() == cfgs[4].content_hash()  # `innerpissa:<default>` is the plain run
    assert cfgs[1].resolved_configs() != cfgs[0].resolved_configs()
    runs = pd.DataFrame({"method": [c.method for c in cfgs[:4]],
                         "params_key": [json.dumps(c.params, sort_keys=True) for c in cfgs[:4]]})
    assert variant_labels(runs).tolist() == ["innerpissa", "innerpissa (recipe=reprpo-v0)", "innerpissa (recipe=seed)", "pca"]


def test_runs_stored_before_the_recipe_was_explicit_collect_as_reprpo_v0() -> None:
    """A config.json with InnerPiSSA params {} predates explicit recipes; it was the reprpo-v0 objective, and must
    not be read as today's default."""
    import json

    from innerpissa.experiments.collect import _run_fields  # applies run.stored_run

    old = _run_fields({"method": "innerpissa", "params": {"train": {"steps": 5}}}, "abc")
    assert json.loads(old["params_key"]) == {"recipe": "reprpo-v0", "train": {"steps": 5}}
    assert json.loads(_run_fields({"method": "pca", "params": {}}, "def")["params_key"]) == {}


def test_live_reference_terms_skip_padding_exactly():
    """The TV barrier and the entropy margin read log-probs at real positions only; with a moved adapter they equal
    the same terms computed over every position of the padded batch (full-vocabulary log-softmax, padding masked)."""
    from innerpissa.objectives.reprpo import forward_logits

    # untruncated rows (so the batch is padded); a low TV threshold, since a random model's entropy is near log V
    a, l, t = resolve("antipasto", SMALL_A, {**SMALL_L, "tv_alpha": 0.01}, {**SMALL_T, "steps": 2, "max_length": 512})
    tr, va = make_pairs(apply_data(load_concept("honesty"), "antipasto"))
    model, tok = tiny_model()
    trainer = Trainer(model, tok, tr, va, a, l, t, progress=False)
    trainer.prepare()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in trainable_parameters(model):
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    o = trainer.objective
    b = o.encode(o.train_pairs, o.batches[0])
    assert (b.attention_mask == 0).any()  # the batch is padded, so skipping padding is exercised
    _, logged = o.step_loss(b, o._live_reference(b), o.u)

    def full_logp(c: float) -> torch.Tensor:
        with torch.no_grad(), o._ctx(c):
            return forward_logits(model, b, o.loss_layer, l.last_n_tokens, o.basis)[1].float().log_softmax(-1)

    n, cm, cmp = len(b) // 2, o._coh_mask(b), b.completion_mask[:, 1:].float()
    ref = full_logp(0.0)
    h = L.token_entropy(ref)
    lp = {}
    for c, tag, rows in ((1.0, "pos", slice(0, n)), (-1.0, "neg", slice(n, None))):
        pol = full_logp(c)
        want = L.tv_coherence(L.total_variation(pol[rows], ref[rows]), h[rows], cm[rows], l.tv_alpha, scale=l.coh_weight)
        assert want.item() > 1e-3 and math.isclose(logged[f"coh_{tag}"], want.item(), rel_tol=1e-4)
        nll = -pol.gather(-1, b.input_ids[:, 1:, None]).squeeze(-1)
        lp[c] = L.seq_logp(nll[:n], cmp[:n]) - L.seq_logp(nll[n:], cmp[n:])
    nll0 = -ref.gather(-1, b.input_ids[:, 1:, None]).squeeze(-1)
    lp0 = L.seq_logp(nll0[:n], cmp[:n]) - L.seq_logp(nll0[n:], cmp[n:])
    h_pair = (h[:n] * cm[:n]).sum(-1) / cm[:n].sum(-1)
    want = L.monotonic_entropy(lp[-1.0] - lp0, lp[1.0] - lp0, h_pair, l.mono_frac)
    assert math.isclose(logged["mono"], want.item(), rel_tol=1e-4, abs_tol=1e-6)
