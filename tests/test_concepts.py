"""Concepts from two words: articles, defaults, the built-in concepts and their datasets, and the CLI end to end."""

from __future__ import annotations

import json

import pytest
import yaml

from innerpissa.concepts import (ConceptError, builtin_concepts, concept_from_words, load_concept, make_pairs,
                                 with_article)
from innerpissa.eval.datasets import load_dataset
from innerpissa.testing import save_tiny_model, tiny_model

SMALL = {"adapter": {"r": 8, "layer_range": [0.0, 0.45]}, "loss": {"loss_r": 8, "last_n_tokens": 2},
         "train": {"steps": 2, "batch_size": 2, "n_train": 8, "n_val": 4, "checkpoint_every": 1}}


@pytest.mark.parametrize("word, expected", [
    ("honest", "an honest"), ("dishonest", "a dishonest"), ("unfair", "an unfair"), ("unique", "a unique"),
    ("European", "a European"), ("one-sided", "a one-sided"), ("hourly", "an hourly"), ("reckless", "a reckless"),
    ("an honest", "an honest"), ("the  loyal", "the loyal"), ("extremely  kind", "an extremely kind"),
])
def test_with_article(word, expected):
    assert with_article(word) == expected


def test_two_words_make_natural_pairs():
    spec = concept_from_words("honest", "dishonest")
    assert spec.name == "honest-dishonest"
    train, val = make_pairs(spec)
    assert train.positive_prompts[0] == "Pretend you're an honest person."
    assert train.negative_prompts[0] == "Pretend you're a dishonest person."
    assert train.neutral_prompts[0] == "Pretend you're a person."
    assert len(train) + len(val) == 384 and not set(train.suffixes) & set(val.suffixes)
    sub = train.subset([2, 0])
    assert sub.suffixes == (train.suffixes[2], train.suffixes[0]) and len(sub.neutral_prompts) == 2


def test_bad_words_are_errors():
    with pytest.raises(ConceptError, match="personas must differ"):
        concept_from_words("fair", "a fair")
    with pytest.raises(ConceptError, match="must not be empty"):
        concept_from_words(" ", "unfair")


def test_yaml_needs_only_two_words(tmp_path):
    path = tmp_path / "kindness.yaml"
    path.write_text("positive: kind\nnegative: cruel\n")
    spec = load_concept(str(path))
    assert (spec.name, spec.positive, spec.negative) == ("kindness", "a kind", "a cruel")
    raw = tmp_path / "raw.yaml"  # a template without an article slot: article off, persona words used verbatim
    raw.write_text(yaml.safe_dump({"positive": "kind", "negative": "cruel", "article": False,
                                   "template": "Act as if you're extremely {persona}.", "neutral": "yourself"}))
    train, _ = make_pairs(load_concept(str(raw)))
    assert train.positive_prompts[0] == "Act as if you're extremely kind."
    assert train.neutral_prompts[0] == "Act as if you're extremely yourself."


def test_builtin_concepts_name_a_dataset_that_loads():
    names = builtin_concepts()
    assert {"honesty", "caution", "fairness", "loyalty", "care", "courage", "responsibility"} <= set(names)
    for name in names:
        spec = load_concept(name)
        train, val = make_pairs(spec)
        assert len(train) > 100 and len(val) > 10 and spec.positive != spec.negative
        es = load_dataset(spec.dataset)
        lab = es.rows[f"label:{es.target_dim}"]
        # every row is labelled on the target dim, one +1 and one -1 row per dilemma
        assert lab.notna().all() and (lab == 1).sum() == (lab == -1).sum() > 100
        assert es.rows.groupby("dilemma_id")[f"label:{es.target_dim}"].sum().eq(0).all()


def test_dd_dim_aliases():
    assert load_dataset("dd-fairness").target_dim == "MFT/Fairness"
    es = load_dataset("dd-MFT/Authority")
    assert es.target_dim == "MFT/Authority" and len(es) == es.rows["label:MFT/Authority"].notna().sum()
    assert len(load_dataset("dd-honesty")) == 674  # unchanged by the aliases
    with pytest.raises(ValueError, match="unknown DailyDilemmas dim 'MFT/Nope'"):
        load_dataset("dd-MFT/Nope")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("concepts")
    model, tok = save_tiny_model(root / "model", "llama")
    (root / "small.yaml").write_text(yaml.safe_dump(SMALL))
    return root


def test_cli_trains_a_two_word_concept(run_cli, saved, tmp_path):
    out = tmp_path / "kind"
    code, stdout, err = run_cli("train", "--positive", "kind", "--negative", "cruel", "--model", str(saved / "model"),
                                "--out", str(out), "--config", str(saved / "small.yaml"))
    assert code == 0, err
    assert json.loads((out / "steerer.json").read_text())["params"]["concept"] == "kind-cruel"
    assert (out / "adapter.safetensors").exists()


@pytest.mark.parametrize("args", [["--positive", "kind"], ["--positive", "kind", "--negative", "cruel", "--concept", "honesty"]])
def test_cli_concept_forms_are_exclusive(run_cli, saved, tmp_path, args):
    code, _, err = run_cli("train", *args, "--model", str(saved / "model"), "--out", str(tmp_path / "o"))
    assert code == 2 and "--positive WORD and --negative WORD" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
