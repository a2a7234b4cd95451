"""Concept spec -> `ContrastPairs`: persona prompts that differ only in the persona, sharing a suffix.

A pair is (user: template.format(positive), assistant: suffix) vs (user: template.format(negative),
assistant: suffix). The suffix is the start of the assistant turn, continued without an end-of-turn
token, so the hidden states at the last tokens read "what this persona is about to say".

A spec needs only two words: `positive: honest`, `negative: dishonest` get an article ("an honest",
"a dishonest") and the default template "Pretend you're {persona} person." reads naturally for
adjectives; the default suffixes are repeng's generic assistant openings. Each pair also carries a
*neutral* prompt (the template with the persona slot filled by `neutral`, default "a": "Pretend you're
a person."), the persona-free context that output-level methods (BiPO, DPO) condition on.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from .. import DATA_DIR
from ..config import validation_message
from ..io import read_json, read_yaml

SUFFIX_DIR = DATA_DIR / "contrastive_suffixes"
CONCEPT_DIR = Path(__file__).parent
DEFAULT_TEMPLATE = "Pretend you're {persona} person."
SYSTEM_PROMPTS = ("none", "template", "model")  # how a pair's system turn is filled (ContrastPairs.messages)
ARTICLES = ("a", "an", "the")
_AN_CONSONANT = ("hone", "honou", "honor", "hour", "heir")  # silent h: "an honest", "an hour"
_A_VOWEL = ("uni", "use", "usu", "uti", "ure", "eu", "one", "once", "ubiq")  # "you"/"w" sounds: "a unique", "a one"


class ConceptError(ValueError):
    """A concept spec or pair set is invalid; the message names the problem."""


class SuffixSource(BaseModel):
    """Where suffixes come from: a vendored list name, a JSON file path, or an inline list."""

    source: str | None = None
    items: list[str] | None = None
    truncate_words: bool = False
    max: int | None = Field(default=None, gt=0)


def with_article(words: str) -> str:
    """Prefix "a"/"an" to an adjective phrase that has no article ("honest" -> "an honest"); a heuristic
    by spelling with the common exceptions (silent h, "u"/"eu"/"one" read as consonants)."""
    words = " ".join(words.split())
    first = words.split(" ", 1)[0].lower()
    if not words or first in ARTICLES:
        return words
    vowel = first[0] in "aeiou" and not first.startswith(_A_VOWEL)
    return f"{'an' if vowel or first.startswith(_AN_CONSONANT) else 'a'} {words}"


def _default_suffixes() -> list["SuffixSource"]:
    return [SuffixSource(source="all_truncated_outputs", max=384)]


class ConceptSpec(BaseModel):
    """A contrastive concept: a template with a `{persona}` slot, two personas and suffix sources.

    Only `positive` and `negative` are required; `name` defaults to "<positive>-<negative>" (the file
    stem for a YAML file), `template` to DEFAULT_TEMPLATE, `suffixes` to 384 generic assistant openings.
    `dataset` names the evaluation set that measures the concept's transfer (e.g. dd-fairness).
    """

    name: str = ""
    template: str = DEFAULT_TEMPLATE
    positive: str
    negative: str
    article: bool = Field(True, description='prefix "a"/"an" to persona words that have no article')
    neutral: str = Field("a", description="persona-slot filler of the neutral prompt (output-level methods)")
    suffixes: list[SuffixSource] = Field(default_factory=_default_suffixes, min_length=1)
    val_fraction: float = Field(default=0.15, gt=0.0, lt=1.0)
    dataset: str | None = Field(None, description="evaluation set that measures this concept, e.g. dd-fairness")
    system_prompt: Literal["none", "template", "model"] = Field(
        "model", description="system turn of every pair: none (empty), template (the persona prompt), model (its default)")

    @field_validator("positive", "negative")
    @classmethod
    def _nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("persona words must not be empty")
        return " ".join(v.split())

    @model_validator(mode="after")
    def _defaults(self) -> "ConceptSpec":
        if self.article:
            self.positive, self.negative = with_article(self.positive), with_article(self.negative)
        if self.positive == self.negative:
            raise ValueError(f"positive and negative are both {self.positive!r}: the personas must differ")
        if not self.name:
            self.name = "-".join(w.split(" ", 1)[-1].replace(" ", "_") for w in (self.positive, self.negative))
        return self

    @field_validator("template")
    @classmethod
    def _has_slot(cls, v: str) -> str:
        if "{persona}" not in v:
            raise ValueError("template must contain the placeholder {persona}")
        return v


@dataclass(frozen=True)
class ContrastPairs:
    """Parallel lists: pair i is (positive_prompts[i], suffixes[i]) vs (negative_prompts[i], suffixes[i]).

    `neutral_prompts` (empty, or one per pair) is the persona-free user prompt of pair i, used by the
    output-level methods (BiPO, DPO) as the context both personas' continuations are scored under.
    """

    positive_prompts: tuple[str, ...]
    negative_prompts: tuple[str, ...]
    suffixes: tuple[str, ...]
    neutral_prompts: tuple[str, ...] = ()
    system: str = "model"  # SYSTEM_PROMPTS: how the system turn is filled (see `messages`)

    def __post_init__(self) -> None:
        n = len(self.suffixes)
        if self.system not in SYSTEM_PROMPTS:
            raise ConceptError(f"unknown system prompt choice {self.system!r}: use one of {', '.join(SYSTEM_PROMPTS)}")
        if n == 0:
            raise ConceptError("no contrastive pairs: check the concept's suffix sources")
        if self.neutral_prompts and len(self.neutral_prompts) != n:
            raise ConceptError(f"{len(self.neutral_prompts)} neutral prompts for {n} pairs: give one per pair or none")
        if not (len(self.positive_prompts) == len(self.negative_prompts) == n):
            raise ConceptError(
                f"unequal pair counts: {len(self.positive_prompts)} positive, "
                f"{len(self.negative_prompts)} negative, {n} suffixes"
            )
        triples = list(zip(self.positive_prompts, self.negative_prompts, self.suffixes))
        if len(set(triples)) != n:
            raise ConceptError("duplicate contrastive pairs: deduplicate the suffix list")
        if any(p == q for p, q, _ in triples):
            raise ConceptError("a positive prompt equals its negative prompt: the personas must differ")

    def __len__(self) -> int:
        return len(self.suffixes)

    def subset(self, idx: list[int]) -> "ContrastPairs":
        """The pairs at positions `idx`, in that order."""
        return ContrastPairs(
            tuple(self.positive_prompts[i] for i in idx),
            tuple(self.negative_prompts[i] for i in idx),
            tuple(self.suffixes[i] for i in idx),
            tuple(self.neutral_prompts[i] for i in idx) if self.neutral_prompts else (),
            self.system,
        )

    def messages(self, i: int, positive: bool) -> list[dict[str, str]]:
        """Chat messages for pair i's positive or negative side (assistant turn = the suffix).

        `system`: "model" sends no system turn (the chat template may insert the model's default, e.g.
        SmolLM2's "You are a helpful AI assistant named SmolLM…"); "none" an empty system turn (which
        stops that default); "template" puts the persona prompt in the system turn, the user turn empty.
        """
        prompt = self.positive_prompts[i] if positive else self.negative_prompts[i]
        suffix = {"role": "assistant", "content": self.suffixes[i]}
        if self.system == "template":
            return [{"role": "system", "content": prompt}, {"role": "user", "content": ""}, suffix]
        head = [{"role": "system", "content": ""}] if self.system == "none" else []
        return [*head, {"role": "user", "content": prompt}, suffix]


def builtin_concepts() -> list[str]:
    """Names of the concept specs shipped with the package."""
    return sorted(p.stem for p in CONCEPT_DIR.glob("*.yaml"))


def load_concept(name_or_path: str) -> ConceptSpec:
    """Load a built-in concept by name, or a YAML/JSON spec file; errors name the missing fields."""
    path = Path(name_or_path)
    if not path.is_file():
        path = CONCEPT_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ConceptError(
                f"unknown concept {name_or_path!r}: use one of {builtin_concepts()} or a path to a YAML spec"
            )
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConceptError(f"{path}: a concept spec must be a mapping with at least positive and negative")
    return _validated({"name": path.stem, **raw}, str(path))


def concept_from_words(positive: str, negative: str, name: str | None = None) -> ConceptSpec:
    """A concept from two contrasting words ("honest", "dishonest"), everything else defaulted."""
    return _validated({"positive": positive, "negative": negative, **({"name": name} if name else {})}, "concept")


def _validated(raw: dict, where: str) -> ConceptSpec:
    try:
        return ConceptSpec(**raw)
    except ValidationError as e:
        raise ConceptError(f"{where}: invalid concept spec ({validation_message(e)})") from None


def _word_prefixes(text: str) -> list[str]:
    words = text.split(" ")
    return [" ".join(words[:k]) for k in range(1, len(words) + 1)]


def _suffixes(src: SuffixSource, rng: random.Random) -> list[str]:
    if src.items is not None:
        items = list(src.items)
    elif src.source is not None:
        path = SUFFIX_DIR / f"{src.source}.json"
        if not path.is_file():
            path = Path(src.source)
        if not path.is_file():
            known = sorted(p.stem for p in SUFFIX_DIR.glob("*.json"))
            raise ConceptError(f"unknown suffix source {src.source!r}: use one of {known} or a JSON list file")
        items = read_json(path)
        if not isinstance(items, list) or not items or not all(isinstance(s, str) for s in items):
            raise ConceptError(f"suffix file {path} must hold a non-empty JSON list of strings")
    else:
        raise ConceptError("a suffix source needs `source` (list name or file) or `items` (inline list)")
    if src.truncate_words:
        items = [p for s in items for p in _word_prefixes(s)]
    items = list(dict.fromkeys(s for s in items if s.strip()))  # dedupe, keep order, drop empty
    if src.max is not None and len(items) > src.max:
        items = rng.sample(items, src.max)
    return items


def make_pairs(spec: ConceptSpec, seed: int = 0) -> tuple[ContrastPairs, ContrastPairs]:
    """Build (train, validation) pairs; the split is by suffix so no suffix is in both."""
    rng = random.Random(seed)
    suffixes = list(dict.fromkeys(s for src in spec.suffixes for s in _suffixes(src, rng)))
    rng.shuffle(suffixes)
    n_val = max(1, int(round(len(suffixes) * spec.val_fraction)))
    if len(suffixes) - n_val < 1:
        raise ConceptError(f"concept {spec.name!r} has {len(suffixes)} suffix(es): need at least 2 to split train/val")
    pos, neg = spec.template.format(persona=spec.positive), spec.template.format(persona=spec.negative)
    neutral = spec.template.format(persona=spec.neutral)

    def build(sfx: list[str]) -> ContrastPairs:
        return ContrastPairs((pos,) * len(sfx), (neg,) * len(sfx), tuple(sfx), (neutral,) * len(sfx), spec.system_prompt)

    return build(suffixes[n_val:]), build(suffixes[:n_val])
