"""Which contrastive pairs a fit sees: one definition for `innerpissa train`, sweeps and the leakage check.

The train/val split (and the spec's `max:` sampling, which draws from the same RNG) and any `n_pairs` subset
use the fixed `PAIR_SEED`, never the training seed: `innerpissa train --seed 3` and a sweep run with seed 3
fit on the same pairs, and every method and seed is compared on the same data. `pairs_record` describes a
fit's pairs (the full concept spec, seed, subset, sha256 of the exact pairs); it is saved beside the fitted
steerer as `pairs.json`, and `seen_pairs` rebuilds the pairs from it and proves they are the ones the fit saw.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from typing import Any

from ..recipes import apply_data
from .pairs import ConceptError, ConceptSpec, ContrastPairs, load_concept, make_pairs

PAIR_SEED = 0
PAIRS_FILE = "pairs.json"


def fit_spec(concept: str | ConceptSpec, recipe: str | None = None) -> ConceptSpec:
    """The spec a fit's pairs come from: `concept` (a name, a spec file or a spec) with `recipe`'s data overrides."""
    spec = concept if isinstance(concept, ConceptSpec) else load_concept(concept)
    if recipe is None:
        return spec
    return apply_data(spec, recipe)


def fit_pairs(concept: str | ConceptSpec, n_pairs: int | None = None, seed: int = PAIR_SEED,
              recipe: str | None = None) -> tuple[ContrastPairs, ContrastPairs]:
    """(train, val) pairs of `fit_spec(concept, recipe)` split with `seed`; train cut to a seeded `n_pairs`
    subset if set."""
    train, val = make_pairs(fit_spec(concept, recipe), seed=seed)
    if n_pairs is not None and n_pairs < len(train):
        train = train.subset(sorted(random.Random(seed).sample(range(len(train)), n_pairs)))
    return train, val


def _blob(p: ContrastPairs) -> list[Any]:
    """The pairs' content: prompts and suffixes, plus every other field that differs from its default."""
    out: list[Any] = [list(p.positive_prompts), list(p.negative_prompts), list(p.suffixes)]
    extra = {f.name: getattr(p, f.name) for f in dataclasses.fields(p)[3:] if getattr(p, f.name) != f.default}
    return out + ([extra] if extra else [])


def pairs_sha256(train: ContrastPairs, val: ContrastPairs) -> str:
    """sha256 (16 hex digits) of the exact train and val pairs, so a record proves which data a fit saw."""
    return hashlib.sha256(json.dumps([_blob(train), _blob(val)]).encode()).hexdigest()[:16]


def pairs_record(concept: str | ConceptSpec, train: ContrastPairs, val: ContrastPairs, n_pairs: int | None = None,
                 seed: int = PAIR_SEED, recipe: str | None = None) -> dict[str, Any]:
    """JSON record of a fit's pairs: the spec they came from (whole, so even an unnamed or since-edited concept can
    be rebuilt), the seed and subset, their counts and hash."""
    spec = fit_spec(concept, recipe)
    return {"concept": spec.name, "spec": spec.model_dump(mode="json"), "pair_seed": seed, "n_pairs": n_pairs,
            "n_train": len(train), "n_val": len(val), "sha256": pairs_sha256(train, val),
            **({"recipe": recipe} if recipe else {})}


def joined(a: ContrastPairs, b: ContrastPairs) -> ContrastPairs:
    """The pairs of `a` followed by those of `b` (tuple fields concatenated, the rest taken from `a`)."""
    return ContrastPairs(**{f.name: getattr(a, f.name) + getattr(b, f.name) if isinstance(getattr(a, f.name), tuple)
                            else getattr(a, f.name) for f in dataclasses.fields(a)})


def seen_pairs(record: dict[str, Any]) -> ContrastPairs:
    """Every pair the fit described by `record` saw (train and val: both shape it), rebuilt and hash-checked."""
    train, val = fit_pairs(ConceptSpec(**record["spec"]), record.get("n_pairs"), record.get("pair_seed", PAIR_SEED))
    if pairs_sha256(train, val) != record["sha256"]:
        raise ConceptError(f"concept {record['concept']!r} no longer gives the pairs this steerer was fitted on "
                           f"(sha256 {record['sha256']}; did a suffix file change?): restore it or refit")
    return joined(train, val)
