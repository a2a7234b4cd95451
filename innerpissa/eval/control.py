"""Positive control: did a fitted steerer learn the concept at all, in distribution, before any transfer claim?

On held-out suffixes (validation pairs: never trained on), compare two per-token log-prob differences of the
suffix tokens:
  g(t) = log p_base(t | positive persona prompt) − log p_base(t | negative persona prompt)   (the concept)
  d(t) = log p_{+c}(t | neutral prompt) − log p_{−c}(t | neutral prompt)                      (the steering)
A steerer that learned the concept makes d point along g: the neutral model at +c speaks more like the
positive persona and at −c more like the negative one. The score is Pearson's r between d and g over all
suffix tokens (scale-free, so it does not reward strength), with a bootstrap CI over suffixes. `slope`
(Σdg / Σg²) says how much of the persona difference the steering reproduces. A random direction of the
same strength scores r ≈ 0 with either sign; `null_band` turns a set of such scores into the band a
method must clear.

`probe_control` asks the same question of the hidden states instead of the tokens: a difference-in-means probe
w (base model, training pairs, suffix-mean hidden state of the positive minus the negative persona) at a few
depths; on the held-out pairs, the share of the persona gap w·(h_pos − h_neg) that steering the neutral prompt
reproduces, w·(h_{+c} − h_{−c}). Output-level r has a wide random null (a model's first-order response to any
perturbation is low-rank, so random directions correlate with the persona difference by chance); a probe
direction in a 576-dim state is hit by a random direction only at ~1/√d.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..batching import Messages, encode
from ..capture import capture
from ..models import decoder_layers
from ..concepts import ContrastPairs
from ..steerers.base import Steerer


def neutral_messages(pairs: ContrastPairs, i: int) -> Messages:
    """Pair i's conversation with the persona-free prompt in place of the positive persona's."""
    if not pairs.neutral_prompts:
        raise ValueError("the pairs carry no neutral prompts: build them with concepts.make_pairs")
    pos = pairs.positive_prompts[i]
    return [dict(m, content=pairs.neutral_prompts[i]) if m["content"] == pos else m for m in pairs.messages(i, True)]


TokenLogprobs = list[tuple[list[int], np.ndarray]]  # per conversation: (suffix token ids, their log-probs)


@torch.no_grad()
def suffix_states(model: PreTrainedModel, tok: PreTrainedTokenizerBase, convs: list[Messages],
                  layers: list[int] | tuple[int, ...] = (), batch_size: int = 16, max_length: int = 256,
                  logprobs: bool = True) -> tuple[TokenLogprobs, dict[int, np.ndarray]]:
    """From one forward per batch under `model` as it is now (steered or not): per conversation the suffix token
    ids and their log-probs, and the mean output of each decoder layer in `layers` (0-based) over the suffix
    (assistant) tokens, {layer: [n, d]} in float64. Layers are read by hooks registered after any steering hooks,
    so an activation addition on a layer's output is seen there. `logprobs=False` skips the vocabulary
    projection of the suffix (the log-prob list is then empty)."""
    blocks = decoder_layers(model)
    device = next(model.parameters()).device
    lps: TokenLogprobs = []
    hidden: dict[int, list[np.ndarray]] = {li: [] for li in layers}
    for s in range(0, len(convs), batch_size):
        b = encode(tok, convs[s: s + batch_size], max_length).to(device)
        k = int(b.completion_mask.sum(1).max()) + 1 if logprobs else 1
        with capture({li: blocks[li] for li in layers}, b.input_ids.shape[1]) as store:
            logits = model(**b.model_inputs(), logits_to_keep=k).logits.float()
        if logprobs:
            lp = torch.log_softmax(logits[:, :-1], -1)  # position j predicts token j + 1 of the last k
            ids = b.input_ids[:, -(k - 1):]
            tok_lp = lp.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
            mask = b.completion_mask[:, -(k - 1):]
            for r in range(len(b)):
                lps.append((ids[r][mask[r]].tolist(), tok_lp[r][mask[r]].double().cpu().numpy()))
        m = b.completion_mask.unsqueeze(-1).to(torch.float64)
        for li in layers:
            hidden[li].append(((store[li].double() * m).sum(1) / m.sum(1).clamp(min=1)).cpu().numpy())
    return lps, {li: np.concatenate(v) for li, v in hidden.items()}


def _steered(model: PreTrainedModel, steerer: Steerer, c: float) -> contextlib.AbstractContextManager:
    return steerer.steer(model, c) if c != 0 else contextlib.nullcontext()


def positive_control(
    model: PreTrainedModel, tok: PreTrainedTokenizerBase, steerer: Steerer, pairs: ContrastPairs,
    c_pos: float = 1.0, c_neg: float = 1.0, batch_size: int = 16, n_boot: int = 1000, seed: int = 0,
) -> dict[str, Any]:
    """Score how far steering at +c_pos / −c_neg on the neutral prompt reproduces the persona difference.

    Keys: score (Pearson r of d and g over suffix tokens), ci_low, ci_high (bootstrap over suffixes), slope
    (Σdg/Σg²), r_pos / r_neg (d replaced by the change at +c_pos / −c_neg alone vs c = 0, the latter negated
    so both are > 0 when each direction moves the right way), n_suffixes, n_tokens, n_misaligned (pairs whose
    suffix tokenised differently under the three prompts: dropped)."""
    n = len(pairs)
    neutral = [neutral_messages(pairs, i) for i in range(n)]
    persona = [pairs.messages(i, True) for i in range(n)] + [pairs.messages(i, False) for i in range(n)]
    base, _ = suffix_states(model, tok, persona + neutral, batch_size=batch_size)
    steered = {c: lp for c, (lp, _) in _steered_states(model, tok, steerer, pairs, c_pos, c_neg, [], batch_size).items()}
    return _token_scores(base, steered, c_pos, c_neg, n_boot, seed)


def _steered_states(model: PreTrainedModel, tok: PreTrainedTokenizerBase, steerer: Steerer, pairs: ContrastPairs,
                    c_pos: float, c_neg: float, layers: list[int], batch_size: int, logprobs: bool = True,
                    ) -> dict[float, tuple[TokenLogprobs, dict[int, np.ndarray]]]:
    """`suffix_states` of each pair's neutral conversation steered at +c_pos and at −c_neg."""
    neutral = [neutral_messages(pairs, i) for i in range(len(pairs))]
    out = {}
    for c in (c_pos, -c_neg):
        with _steered(model, steerer, c):
            out[c] = suffix_states(model, tok, [steerer.messages(m, c) for m in neutral], layers, batch_size,
                                   logprobs=logprobs)
    return out


def _token_scores(base: TokenLogprobs, steered: dict[float, TokenLogprobs], c_pos: float, c_neg: float,
                  n_boot: int, seed: int) -> dict[str, Any]:
    """positive_control's statistics from the base log-probs (positive, negative, neutral conversations, n each)
    and the steered neutral ones."""
    n = len(base) // 3
    gs, ds, dps, dns, groups = [], [], [], [], []
    misaligned = 0
    for i in range(n):
        seqs = [base[i], base[n + i], base[2 * n + i], steered[c_pos][i], steered[-c_neg][i]]
        m = min(len(s[0]) for s in seqs)
        tails = [s[0][len(s[0]) - m:] for s in seqs]
        if m == 0 or any(t != tails[0] for t in tails):
            misaligned += 1
            continue
        lp_p, lp_n, lp_0, lp_up, lp_dn = (s[1][len(s[1]) - m:] for s in seqs)
        gs.append(lp_p - lp_n)
        ds.append(lp_up - lp_dn)
        dps.append(lp_up - lp_0)
        dns.append(lp_0 - lp_dn)
        groups.append(np.full(m, len(groups)))
    out: dict[str, Any] = {"score": np.nan, "ci_low": np.nan, "ci_high": np.nan, "slope": np.nan, "r_pos": np.nan,
                           "r_neg": np.nan, "n_suffixes": len(gs), "n_tokens": 0, "n_misaligned": misaligned,
                           "c_pos": c_pos, "c_neg": c_neg}
    if len(gs) < 2:
        return out
    g, d, dp, dn, grp = map(np.concatenate, (gs, ds, dps, dns, groups))
    out.update(n_tokens=int(len(g)), score=_r(d, g), slope=float((d @ g) / (g @ g)) if g @ g > 0 else np.nan,
               r_pos=_r(dp, g), r_neg=_r(dn, g))
    # bootstrap over suffixes: resample whole suffixes (their tokens are not independent)
    rng = np.random.default_rng(seed)
    G = len(gs)
    sums = np.stack([np.bincount(grp, weights=w, minlength=G) for w in (np.ones_like(g), d, g, d * d, g * g, d * g)], 1)
    counts = rng.multinomial(G, np.full(G, 1.0 / G), size=n_boot)
    boot = _r_from_sums(counts @ sums)
    boot = boot[np.isfinite(boot)]
    if len(boot) > 1:
        out.update(ci_low=float(np.percentile(boot, 2.5)), ci_high=float(np.percentile(boot, 97.5)))
    return out


def _r(x: np.ndarray, y: np.ndarray) -> float:
    if np.std(x) == 0 or np.std(y) == 0:
        return np.nan
    return float(np.corrcoef(x, y)[0, 1])


def _r_from_sums(t: np.ndarray) -> np.ndarray:
    """Pearson r from summed [n, Σx, Σy, Σxx, Σyy, Σxy] (last axis)."""
    n, sx, sy, sxx, syy, sxy = np.moveaxis(t, -1, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sxy - sx * sy / n) / np.sqrt((sxx - sx * sx / n) * (syy - sy * sy / n))


def null_band(null_scores: list[float], level: float = 0.95) -> dict[str, float]:
    """Band of a random-direction null from one score per random seed: mean, sd and the upper end of the
    `level` prediction interval for one more random draw (t-based, so it widens honestly with few seeds)."""
    v = pd.to_numeric(pd.Series(list(null_scores), dtype=object), errors="coerce").to_numpy(float)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return {"null_mean": np.nan, "null_sd": np.nan, "null_hi": np.nan, "null_lo": np.nan, "null_n": len(v)}
    half = stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) * np.sqrt(1 + 1 / len(v))
    return {"null_mean": float(v.mean()), "null_sd": float(v.std(ddof=1)), "null_hi": float(v.mean() + half),
            "null_lo": float(v.mean() - half), "null_n": int(len(v))}


PROBE_DEPTHS = (0.25, 0.5, 0.75, 1.0)  # output of the layer this far up the stack; 1.0 = the last, before the final norm


@dataclass(frozen=True)
class ProbeBasis:
    """The unsteered half of both controls, reusable across steerers fit on the same pairs: per depth the decoder
    layer, the unit probe direction w (training pairs) and each held-out pair's persona gap along it; and the base
    log-probs of the held-out pairs' positive, negative and neutral conversations (the token control's g)."""

    depths: tuple[float, ...]
    layers: tuple[int, ...]
    w: dict[int, np.ndarray]
    gap: dict[int, np.ndarray]
    n_train: int
    base_logprobs: TokenLogprobs


def probe_basis(model: PreTrainedModel, tok: PreTrainedTokenizerBase, train: ContrastPairs, val: ContrastPairs,
                depths: tuple[float, ...] = PROBE_DEPTHS, batch_size: int = 16) -> ProbeBasis:
    """Difference-in-means probe per depth on the base model's suffix-mean states, the held-out gaps, and the
    held-out base log-probs (one forward per held-out conversation serves both)."""
    depths = tuple(sorted(depths))
    layers = tuple(max(0, round(d * model.config.num_hidden_layers) - 1) for d in depths)
    uniq = sorted(set(layers))
    n, m = len(train), len(val)
    _, tr = suffix_states(model, tok, [train.messages(i, True) for i in range(n)]
                          + [train.messages(i, False) for i in range(n)], uniq, batch_size, logprobs=False)
    lp, va = suffix_states(model, tok, [val.messages(i, True) for i in range(m)]
                           + [val.messages(i, False) for i in range(m)], uniq, batch_size)
    lp_neutral, _ = suffix_states(model, tok, [neutral_messages(val, i) for i in range(m)], batch_size=batch_size)
    w = {li: (tr[li][:n] - tr[li][n:]).mean(0) for li in uniq}
    w = {li: v / (np.linalg.norm(v) or 1.0) for li, v in w.items()}
    return ProbeBasis(depths, layers, w, {li: (va[li][:m] - va[li][m:]) @ w[li] for li in uniq}, n, lp + lp_neutral)


def probe_control(
    model: PreTrainedModel, tok: PreTrainedTokenizerBase, steerer: Steerer, train: ContrastPairs,
    val: ContrastPairs, c_pos: float = 1.0, c_neg: float = 1.0, basis: ProbeBasis | None = None,
    batch_size: int = 16, n_boot: int = 1000, seed: int = 0,
) -> dict[str, Any]:
    """The hidden-state positive control, flat keys for control.json: `probe_score` (share of the held-out persona
    gap along the last layer's probe reproduced by steering at +c_pos vs −c_neg, mean move ÷ mean gap),
    `probe_ci_low/high` (bootstrap over held-out pairs), `probe_frac_right` (pairs moved the positive way) and
    `probe_score_d<depth>` per depth. The headline depth (the last layer) is fixed in advance, not picked.
    `basis` (from `probe_basis` on the same model and pairs) skips the unsteered forwards."""
    basis = basis or probe_basis(model, tok, train, val, batch_size=batch_size)
    moved = {c: h for c, (_, h) in _steered_states(model, tok, steerer, val, c_pos, c_neg, sorted(set(basis.layers)),
                                                     batch_size, logprobs=False).items()}
    return _probe_scores(basis, moved, c_pos, c_neg, n_boot, seed)


def controls(
    model: PreTrainedModel, tok: PreTrainedTokenizerBase, steerer: Steerer, train: ContrastPairs,
    val: ContrastPairs, basis: ProbeBasis, c_pos: float = 1.0, c_neg: float = 1.0, batch_size: int = 16,
    n_boot: int = 1000, seed: int = 0,
) -> dict[str, Any]:
    """Both controls, {**positive_control(val), **probe_control}, from one steered forward per held-out pair and
    sign; the unsteered forwards come from `basis`."""
    st = _steered_states(model, tok, steerer, val, c_pos, c_neg, sorted(set(basis.layers)), batch_size)
    return {**_token_scores(basis.base_logprobs, {c: lp for c, (lp, _) in st.items()}, c_pos, c_neg, n_boot, seed),
            **_probe_scores(basis, {c: h for c, (_, h) in st.items()}, c_pos, c_neg, n_boot, seed)}


def _probe_scores(basis: ProbeBasis, moved: dict[float, dict[int, np.ndarray]], c_pos: float, c_neg: float,
                  n_boot: int, seed: int) -> dict[str, Any]:
    """probe_control's statistics from the basis and the steered suffix-mean states."""
    n_val = len(next(iter(basis.gap.values())))
    idx = np.random.default_rng(seed).integers(0, n_val, size=(n_boot, n_val))
    out: dict[str, Any] = {"probe_layers": list(basis.layers), "probe_n_train": basis.n_train, "probe_n_val": n_val}
    for d, li in zip(basis.depths, basis.layers):
        gap, move = basis.gap[li], (moved[c_pos][li] - moved[-c_neg][li]) @ basis.w[li]
        out[f"probe_score_d{d:g}"] = float(move.mean() / gap.mean()) if gap.mean() != 0 else np.nan
        if d == basis.depths[-1]:
            boot = move[idx].mean(1) / gap[idx].mean(1)
            out.update(probe_score=out[f"probe_score_d{d:g}"], probe_ci_low=float(np.percentile(boot, 2.5)),
                       probe_ci_high=float(np.percentile(boot, 97.5)), probe_frac_right=float((move > 0).mean()),
                       probe_gap=float(gap.mean()))
    return out
