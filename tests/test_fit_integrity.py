"""What a fit sees and keeps: a second fit trains a fresh adapter, typos in hyper-parameters raise, and
dims='data' refuses contrast activations that do not cover every target module."""

import pytest
import torch

from innerpissa.adapter import adapter_layers, attach, collect_module_inputs, target_names
from innerpissa.batching import encode_pairs
from innerpissa.concepts import load_concept, make_pairs
from innerpissa.config import AdapterConfig
from innerpissa.recipes import DEFAULT_RECIPE
from innerpissa.steerers import get_steerer
from innerpissa.testing import save_tiny_model, tiny_model

TRAIN, VAL = make_pairs(load_concept("honesty"))
SMALL = dict(loss=dict(loss_r=8, last_n_tokens=2), train=dict(steps=2, batch_size=2, n_train=8, n_val=4))


def test_second_fit_trains_a_fresh_adapter_with_the_new_config():
    model, tok = tiny_model("llama")
    first = get_steerer("innerpissa", adapter=dict(r=4, layer_range=(0.0, 0.45)), **SMALL)
    first.fit(model, tok, TRAIN, VAL, progress=False)
    old = dict(adapter_layers(model))
    assert {layer.S.numel() for layer in old.values()} == {4}
    second = get_steerer("innerpissa", adapter=dict(r=8, layer_range=(0.2, 0.45), rotate_u=True), **SMALL)
    second.fit(model, tok, TRAIN, VAL, progress=False)
    new = adapter_layers(model)
    assert {layer.S.numel() for layer in new.values()} == {8}  # the new config, not the old adapter
    assert all(layer.P_u is not None for layer in new.values())
    assert set(new) < set(old) and not any(new[n] is old[n] for n in new)
    # no adapter inside an adapter: every wrapped module is the model's original nn.Linear
    assert all(type(layer.base_layer) is torch.nn.Linear for layer in new.values())
    fresh, _ = tiny_model("llama")
    once = get_steerer("innerpissa", adapter=dict(r=8, layer_range=(0.2, 0.45), rotate_u=True), **SMALL)
    once.fit(fresh, tok, TRAIN, VAL, progress=False)
    for (n, a), (_, b) in zip(sorted(new.items()), sorted(adapter_layers(fresh).items())):
        assert torch.equal(a.U, b.U) and torch.equal(a.S, b.S), n  # the SVD of the *base* weight


@pytest.mark.parametrize("kwargs, message", [
    (dict(trian={"steps": 3}), r"unexpected keyword argument 'trian'.*valid: .*adapter, loss, train, model, concept"),
    (dict(train={"stpes": 3}), r"unknown config path\(s\) train.stpes; train fields are: seed, lr"),
    (dict(adapter={"rr": 3}), r"unknown config path\(s\) adapter.rr; adapter fields are: r, target_modules"),
    (dict(loss={"tau": -1}), r"bad config value loss.tau: Input should be greater than or equal to 0"),
])
def test_typos_in_hyper_parameters_raise_naming_valid_keys(kwargs, message):
    with pytest.raises(ValueError, match=message):
        get_steerer("innerpissa", **kwargs)


def test_recorded_fields_round_trip_through_params():
    s = get_steerer("innerpissa", model="tiny", concept="honesty", train={"steps": 3})
    p = s.params()
    assert (p["model"], p["concept"], p["train"]["steps"]) == ("tiny", "honesty", 3)
    assert get_steerer("innerpissa", **p).params() == p
    assert "model" not in get_steerer("innerpissa").params()


def test_data_dims_need_contrast_for_every_target_module():
    model, tok = tiny_model("llama")
    cfg = AdapterConfig(r=4, dims="data", layers=(1, 2), target_modules=("o_proj",))
    names = target_names(model, cfg)
    b = encode_pairs(tok, TRAIN.subset(list(range(4))))
    other = collect_module_inputs(model, ["model.layers.0.self_attn.o_proj", names[0]], b.model_inputs(), 4, 2)
    # neither a strict subset nor a superset of the names: the old `set(contrast) < set(names)` let it through
    with pytest.raises(ValueError, match="needs contrast activations for every target module"):
        attach(model, cfg, contrast=other)
    full = collect_module_inputs(model, ["model.layers.0.self_attn.o_proj", *names], b.model_inputs(), 4, 2)
    assert set(attach(model, cfg, contrast=full)) == set(names)  # a superset is fine


# --- which pairs a fit saw: one function (fit_pairs), a record beside the adapter, used by eval's leakage check ---

def test_cli_train_records_its_pairs_and_eval_checks_leakage_against_them(run_cli, tmp_path):
    import json

    import pandas as pd
    import yaml

    from innerpissa.concepts.fit_data import PAIRS_FILE, fit_pairs, joined, pairs_sha256

    model, tok = save_tiny_model(tmp_path / "model", "llama")
    small = {"adapter": {"r": 4, "layer_range": [0.2, 0.45]}, "loss": {"loss_r": 8, "last_n_tokens": 2},
             "train": {"steps": 1, "batch_size": 2, "n_train": 4, "n_val": 2}}
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(small))
    code, _, err = run_cli("train", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "a"),
                           "--config", str(tmp_path / "small.yaml"), "--seed", "3")
    assert code == 0, err
    train, val = fit_pairs("honesty", recipe=DEFAULT_RECIPE)  # the sweep's pairs: the seed (3) does not change them
    record = json.loads((tmp_path / "a" / PAIRS_FILE).read_text())
    assert (record["concept"], record["pair_seed"], record["sha256"]) == ("honesty", 0, pairs_sha256(train, val))
    # a long suffix the fit saw but that the old rebuild (make_pairs with the training seed 3) would not contain
    old = joined(*make_pairs(load_concept("honesty"), seed=3))
    leaked = next(s for s in train.suffixes + val.suffixes if len(s.split()) >= 8 and s not in old.suffixes)
    rows = tmp_path / "rows.csv"
    pd.DataFrame({"prompt": [f"Is this right? {leaked}", "Is the sky blue?", "Is water wet?", "Do fish swim?"],
                  "label:x": [1, -1, 1, -1]}).to_csv(rows, index=False)
    code, _, err = run_cli("eval", "--adapter", str(tmp_path / "a"), "--dataset", str(rows), "--n-boot", "10",
                           "--out", str(tmp_path / "e"))
    assert code == 0, err
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["rows"]["n_train_overlap"] == 1
    cfg = json.loads((tmp_path / "e" / "config.json").read_text())
    assert cfg["overlap"]["n_train_pairs"] == len(train) + len(val)
    # a record that no longer matches what its concept gives: eval refuses instead of checking the wrong set
    (tmp_path / "a" / PAIRS_FILE).write_text(json.dumps({**record, "sha256": "0" * 16}))
    code, _, err = run_cli("eval", "--adapter", str(tmp_path / "a"), "--dataset", str(rows), "--n-boot", "10",
                           "--out", str(tmp_path / "e2"))
    assert code == 2 and "no longer gives the pairs this steerer was fitted on" in err
    assert not (tmp_path / "e2").exists()
