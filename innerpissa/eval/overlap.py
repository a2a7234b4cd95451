"""Leakage check: does any evaluation prompt share text with the contrastive training pairs?

A question overlaps when one of its messages contains a run of `n` consecutive words (lower-cased,
punctuation ignored) that also occurs in a training prompt or suffix, or equals a training text that is
shorter than `n` words (short suffixes such as "The" are only matched exactly, else everything would match).
"""

from __future__ import annotations

import re

from ..concepts import ContrastPairs
from .datasets import EvalSet


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def train_overlap(evalset: EvalSet, pairs: ContrastPairs, n: int = 8) -> list[str]:
    """Row ids of questions that share an n-word run (or an exact short text) with the training pairs."""
    if n < 1:
        raise ValueError(f"n-gram length must be >= 1, got {n}")
    train = set(pairs.positive_prompts) | set(pairs.negative_prompts) | set(pairs.suffixes)
    grams: set[tuple[str, ...]] = set()
    short: set[tuple[str, ...]] = set()
    for text in train:
        w = _words(text)
        if len(w) >= n:
            grams |= _ngrams(w, n)
        elif w:
            short.add(tuple(w))
    hits = []
    for row_id, messages in zip(evalset.rows["row_id"], evalset.rows["messages"]):
        for m in messages:
            w = _words(m["content"])
            if tuple(w) in short or not grams.isdisjoint(_ngrams(w, n)):
                hits.append(row_id)
                break
    return hits
