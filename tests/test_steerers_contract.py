"""Every registered steerer keeps the one contract, on the tiny model: what its class says about itself is consistent,
fit (a few steps for trained ones) -> steer(0) is the base model -> steer(±1) changes the logits -> a save/load
round trip gives identical logits. A new method module is tested here with no edit; and the experiments layer
names no method (it reads the classes' facts instead)."""

from __future__ import annotations

import ast
import contextlib
from pathlib import Path

import pytest
import torch

from innerpissa import steerers
from innerpissa.batching import encode
from innerpissa.concepts import load_concept, make_pairs
from innerpissa.config import set_path
from innerpissa.steerers import get_steerer, load_steerer, steerer_class
from innerpissa.testing import tiny_model

METHODS = steerers.available()
TRAIN, VAL = make_pairs(load_concept("honesty"))
PAIRS, VAL_PAIRS = TRAIN.subset(list(range(16))), VAL.subset(list(range(4)))
# small settings by params path, applied wherever a method has that path (a trained fit takes a few steps)
SMALL = {"steps": 2, "batch_size": 4, "gen_tokens": 4, "r": 4, "adapter.r": 8, "loss.loss_r": 8,
         "loss.last_n_tokens": 2, "train.steps": 2, "train.batch_size": 2, "train.n_train": 8, "train.n_val": 4}
CONVS = [[{"role": "user", "content": "Would you tell your friend the truth about the broken vase?"}]]


def _has(cls: type, path: str) -> bool:
    """Whether `path` (a params field, or section.field) exists in the method's params."""
    top, _, rest = path.partition(".")
    if top not in cls.Params.model_fields:
        return False
    return not rest or (top in cls.sections and rest in cls.sections[top].model_fields)


def _small(cls: type) -> dict:
    params: dict = {}
    for path, value in SMALL.items():
        if _has(cls, path):
            params = set_path(params, path, value)
    return params


class _Unsteered:
    """The base model: messages as they are, no steering."""

    def messages(self, messages: list, c: float) -> list:
        return messages

    def steer(self, model, c: float) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


@torch.no_grad()
def _last_logits(model, tok, steerer, c: float) -> torch.Tensor:
    """Last-position logits of CONVS sent through the steerer at c (its messages and its steering)."""
    batch = encode(tok, [steerer.messages(m, c) for m in CONVS])
    with steerer.steer(model, c):
        return model(**batch.model_inputs()).logits[:, -1]


@pytest.mark.parametrize("name", METHODS)
def test_class_facts_are_consistent(name: str) -> None:
    cls = steerer_class(name)
    assert cls.name == name and get_steerer(name).name == name
    s = get_steerer(name, **_small(cls))
    assert get_steerer(name, **s.params()).params() == s.params()  # params() rebuilds the same steerer
    cls.check_params(_small(cls))
    if cls.seed_param is not None:  # the seed goes to a real field
        assert _has(cls, cls.seed_param), cls.seed_param
        cls.check_params(set_path({}, cls.seed_param, 3))
    for setting, path in cls.overrides.items():
        assert setting in ("steps", "precision") and _has(cls, path), (setting, path)
        cls.check_params(set_path({}, path, 3 if setting == "steps" else "fp32"))
    for alias, params in cls.aliases.items():
        assert alias not in METHODS and steerers.aliases()[alias] == (name, params)
        cls.check_params(params)
    assert cls.discrete_coeffs is None or 0.0 in cls.discrete_coeffs
    assert not cls.trainable or cls.seed_param is not None  # a trained fit depends on its seed
    for preset in cls.presets.values():
        method, params = cls.apply_preset(preset, cls.explicit_params({}))
        steerer_class(method).check_params(params)
    with pytest.raises(ValueError, match="bad hyper-parameters"):
        get_steerer(name, no_such_param=1)


def test_roles_and_aliases_are_unique() -> None:
    roles = [steerer_class(m).role for m in METHODS if steerer_class(m).role is not None]
    assert sorted(roles) == sorted(set(roles)) and {"method", "prompting", "null"} <= set(roles)
    assert steerers.with_role("method") == steerers.DEFAULT_METHOD
    assert len(steerers.presets()) == sum(len(steerer_class(m).presets) for m in METHODS)


@pytest.mark.parametrize("name", METHODS)
def test_fit_steer_save_load(name: str, tmp_path: Path) -> None:
    cls = steerer_class(name)
    model, tok = tiny_model("llama")
    base = _last_logits(model, tok, _Unsteered(), 0.0)
    steerer = get_steerer(name, **_small(cls))
    steerer.fit(model, tok, PAIRS, VAL_PAIRS, ckpt_dir=tmp_path / "ckpt", resume=False, progress=False)
    assert torch.equal(_last_logits(model, tok, steerer, 0.0), base)  # c = 0 is the base model
    steered = {c: _last_logits(model, tok, steerer, c) for c in (-1.0, 1.0)}
    for c, logits in steered.items():
        assert not torch.equal(logits, base), c
    assert not torch.equal(steered[1.0], steered[-1.0])
    assert torch.equal(_last_logits(model, tok, steerer, 0.0), base)  # leaving steer restores the model

    steerer.save(tmp_path / "saved")
    fresh, _ = tiny_model("llama")  # same seed: the same base weights
    loaded = load_steerer(fresh, tmp_path / "saved")
    assert type(loaded) is cls and loaded.params() == steerer.params()
    assert torch.equal(_last_logits(fresh, tok, loaded, 0.0), base)
    for c, logits in steered.items():
        assert torch.equal(_last_logits(fresh, tok, loaded, c), logits), c

    if cls.foldable:  # what `merge` / `export` rely on: the steering folds into plain weights at one c
        from innerpissa.adapter import merge

        merge(fresh, 1.0)
        torch.testing.assert_close(_last_logits(fresh, tok, _Unsteered(), 0.0), steered[1.0], rtol=1e-4, atol=1e-4)


# string constants in innerpissa/experiments/ that equal a method's name but do not mean the method
NOT_A_METHOD = {
    ("collect.py", "prompt"): "the generations' prompt column",
    ("report.py", "prompt"): "the generations' prompt column",
    ("sweep.py", "innerpissa"): "the W&B project, named after the package",
}


def test_experiments_name_no_method() -> None:
    names = set(METHODS) | set(steerers.aliases())
    found = []
    for f in sorted((Path(steerers.__file__).parent.parent / "experiments").glob("*.py")):
        tree = ast.parse(f.read_text())
        docs = {id(n.body[0].value) for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
                and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                text = node.value.rstrip(":")  # an f-string's "innerpissa:" prefix
                if text in names and (f.name, text) not in NOT_A_METHOD:
                    found.append(f"{f.name}:{node.lineno}: {node.value!r}")
    assert not found, "experiments/ names methods (read the steerer classes' facts instead):\n" + "\n".join(found)
