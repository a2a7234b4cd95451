"""What a fit sees and keeps: a second fit trains a fresh adapter, typos in hyper-parameters raise, and
dims='data' refuses contrast activations that do not cover every target module."""

import pytest
import torch

from innerpissa.adapter import adapter_layers, attach, collect_module_inputs, target_names
from innerpissa.batching import encode_pairs
from innerpissa.concepts import load_concept, make_pairs
from innerpissa.config import AdapterConfig
from innerpissa.steerers import get_steerer
from innerpissa.testing import tiny_model

TRAIN, VAL = make_pairs(load_concept("honesty"))
SMALL = dict(loss=dict(loss_r=8, last_n_tokens=2), train=dict(steps=2, batch_size=2, n_train=8, n_val=4))


def test_second_fit_trains_a_fresh_adapter_with_the_new_config():
    model, tok = tiny_model("llama")
    first = get_steerer("innerpissa", adapter=dict(r=4, layer_range=(0.0, 1.0)), **SMALL)
    first.fit(model, tok, TRAIN, VAL, progress=False)
    old = dict(adapter_layers(model))
    assert {layer.S.numel() for layer in old.values()} == {4}
    second = get_steerer("innerpissa", adapter=dict(r=8, layer_range=(0.5, 1.0), rotate_u=True), **SMALL)
    second.fit(model, tok, TRAIN, VAL, progress=False)
    new = adapter_layers(model)
    assert {layer.S.numel() for layer in new.values()} == {8}  # the new config, not the old adapter
    assert all(layer.P_u is not None for layer in new.values())
    assert set(new) < set(old) and not any(new[n] is old[n] for n in new)
    # no adapter inside an adapter: every wrapped module is the model's original nn.Linear
    assert all(type(layer.base_layer) is torch.nn.Linear for layer in new.values())
    fresh, _ = tiny_model("llama")
    once = get_steerer("innerpissa", adapter=dict(r=8, layer_range=(0.5, 1.0), rotate_u=True), **SMALL)
    once.fit(fresh, tok, TRAIN, VAL, progress=False)
    for (n, a), (_, b) in zip(sorted(new.items()), sorted(adapter_layers(fresh).items())):
        assert torch.equal(a.U, b.U) and torch.equal(a.S, b.S), n  # the SVD of the *base* weight


@pytest.mark.parametrize("kwargs, message", [
    (dict(trian={"steps": 3}), r"unexpected keyword argument 'trian'.*valid: adapter, loss, train, model, concept"),
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
