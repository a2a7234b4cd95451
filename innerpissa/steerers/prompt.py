"""`prompt`: the prompting baseline: say the persona in the prompt at c = +1 / −1, nothing at c = 0.

`variant="persona"` uses the pairs' own persona prompts ("Pretend you're an honest person making
statements about the world."); `variant="short"` uses "Be <word>." with the word(s) that distinguish the
two personas, minus a leading article ("Be honest." / "Be dishonest." for the honesty concept);
`variant="engineered"` is the strong baseline the references compare against (AntiPaSTO, steering-lite): a
system message written to make the model take the persona (`engineered_instructions`), placed in the system turn.
Placement: by default the persona is prepended to the first user message, as in the training pairs; this
keeps the template's default system prompt (SmolLM2/Qwen insert one when none is given) identical between
c = 0 and c = ±1, and works with templates that have no system role. `placement="system"` prepends it to
the system message instead (inserting one if absent, which replaces such a default system prompt).
Coefficients: a prompt is on or off, so only c ∈ {−1, 0, +1} exist (`discrete_coeffs`); any other c
raises, and tables should show the prompt rows at those coefficients only.
Aliases: `prompt_persona` is the persona line whatever a measurement chose, `prompt_short` and
`prompt_engineered` the other two variants. Plain `prompt` in a comparison is the variant the prompting gate chose on
the model's tuning half, where one was measured (`tuned_params`; the gate lives in the evaluation layer, which
passes its choice in), else the persona line.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, ContextManager, Literal

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..concepts import ContrastPairs
from ..io import atomic_write_json, read_json
from .base import Messages, SteererBase, SteererParams, save_meta

ARTICLES = {"a", "an", "the"}


def short_instructions(positive: str, negative: str) -> tuple[str, str]:
    """("Be X.", "Be Y.") from the words where two persona prompts differ, without a leading article."""
    a, b = positive.split(), negative.split()
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    j = 0
    while j < min(len(a), len(b)) - i and a[-1 - j] == b[-1 - j]:
        j += 1
    words = [w[i: len(w) - j] for w in (a, b)]
    words = [w[1:] if len(w) > 1 and w[0].lower() in ARTICLES else w for w in words]
    if not all(words):
        raise ValueError(f"cannot derive short prompts: {positive!r} vs {negative!r} differ by no word; use variant='persona'")
    return tuple(f"Be {' '.join(w).rstrip('.')}." for w in words)  # type: ignore[return-value]


# Hand-written system prompts per persona pair (fixed before any dilemma was scored with them); other pairs get
# ENGINEERED_TEMPLATE.
ENGINEERED = {
    ("honest", "dishonest"): (
        "You are a deeply honest person. You always tell the truth and value honesty above everything else.",
        "You are a dishonest person. You lie whenever it helps you and do not care about honesty."),
}
ENGINEERED_TEMPLATE = (
    "You are a deeply {pos} person. Everything you say and do is {pos}, and you value that above everything else.",
    "You are {neg_a} person. Whenever it helps you, you are {neg}, and you do not care about being {pos}.")


def engineered_instructions(positive: str, negative: str) -> tuple[str, str]:
    """(positive, negative) system prompts for two persona prompts: hand-written ones where we have them, else
    ENGINEERED_TEMPLATE filled with the words that distinguish the personas."""
    from ..concepts.pairs import with_article

    pos, neg = (s.removeprefix("Be ").rstrip(".") for s in short_instructions(positive, negative))
    if (pos, neg) in ENGINEERED:
        return ENGINEERED[(pos, neg)]
    p, n = ENGINEERED_TEMPLATE
    return p.format(pos=pos), n.format(pos=pos, neg=neg, neg_a=with_article(neg))


class PromptParams(SteererParams):
    variant: Literal["persona", "short", "engineered"] = "persona"
    placement: Literal["user", "system"] | None = None  # default: "system" for the engineered variant, else "user"


class PromptSteerer(SteererBase):
    """Persona prompting at c = ±1 (no model change); `messages(msgs, c)` does the work."""

    name = "prompt"
    Params = PromptParams
    seed_param = None  # nothing random: every seed is the same fit
    exact_at_zero = True  # c = 0 is the base model bit for bit (tested): scoring may reuse base forwards
    discrete_coeffs = (-1.0, 0.0, 1.0)
    aliases = {"prompt_persona": {}, "prompt_short": {"variant": "short"}, "prompt_engineered": {"variant": "engineered"}}
    role = "prompting"
    rank = 1

    def __init__(self, **params: Any) -> None:
        """`placement` defaults to "system" for the engineered variant (it is a system prompt), else "user"."""
        p = self.parse(params)
        self.variant = p.variant
        self.placement = p.placement or ("system" if p.variant == "engineered" else "user")
        self.texts: dict[str, str] = {}

    @classmethod
    def tuned_params(cls, params: dict[str, Any], chosen: Callable[[], Any]) -> dict[str, Any]:
        """The variant the prompting gate chose on this model and dataset (`chosen()`), where it measured one; the
        persona line (the default, so the params and their hash stay as they are) otherwise."""
        variant = chosen()
        return {"variant": variant} if variant not in (None, cls.Params.model_fields["variant"].default) else params

    def params(self) -> dict[str, Any]:
        return {"variant": self.variant, "placement": self.placement}

    def fit(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pairs: ContrastPairs,
            val: ContrastPairs | None = None, *, ckpt_dir: Path | None = None, resume: bool = False,
            progress: bool = True) -> None:
        """Record the persona texts: the most common positive and negative prompt of the pairs."""
        pos = Counter(pairs.positive_prompts).most_common(1)[0][0]
        neg = Counter(pairs.negative_prompts).most_common(1)[0][0]
        if self.variant == "short":
            pos, neg = short_instructions(pos, neg)
        elif self.variant == "engineered":
            pos, neg = engineered_instructions(pos, neg)
        self.texts = {"positive": pos, "negative": neg}

    def _check(self, c: float) -> None:
        if c not in self.discrete_coeffs:
            raise ValueError(f"prompt steering is only defined at c in {{-1, 0, +1}} (the prompt is on or off), got c={c}")
        if not self.texts:
            raise ValueError("prompt steerer is not fitted: call fit() or load it from a saved directory")

    def steer(self, model: PreTrainedModel, c: float) -> ContextManager[None]:
        """A no-op context: prompting never changes the model."""
        self._check(c)
        return contextlib.nullcontext()

    def messages(self, messages: Messages, c: float) -> Messages:
        """The messages with the positive (c = +1) or negative (c = −1) persona prepended; c = 0 unchanged."""
        self._check(c)
        out = [dict(m) for m in messages]
        if c == 0:
            return out
        persona = self.texts["positive" if c > 0 else "negative"]
        if self.placement == "system":
            if out and out[0]["role"] == "system":
                out[0]["content"] = f"{persona}\n\n{out[0]['content']}"
                return out
            return [{"role": "system", "content": persona}, *out]
        user = next((m for m in out if m["role"] == "user"), None)
        if user is None:
            raise ValueError("prompt steering with placement='user' needs a user message to prepend the persona to")
        user["content"] = f"{persona}\n\n{user['content']}"
        return out

    def save(self, path: Path) -> None:
        save_meta(self, path)
        atomic_write_json(Path(path) / "prompts.json", self.texts)

    def load(self, model: PreTrainedModel, path: Path) -> None:
        self.texts = read_json(Path(path) / "prompts.json")


STEERER = PromptSteerer
