"""The ReprPO objective: steer the hidden states along the preference direction, keep the outputs coherent.

1. Reference pass (adapter off, once): hidden states at the loss layer (last N tokens, in the loss basis) and
   per-token log-probs of the suffix, for every pair used. The base model is frozen, so these never change;
   caching them (`PairReference` per pair) saves one forward per step.
2. Preference direction u = normalised mean chosen−rejected difference of the cached states.
3. Each step, for c = +1 and c = −1: steered forward on chosen+rejected, then
   separation (move the projection on u up at +1, down at −1) + coherence barrier (per-token NLL
   increase over the reference beyond τ, or TV distance, on that coefficient's "positive" sequence) + monotonic
   hinge on the answer log-prob gap across c = −1, 0, +1. Each term is a pure function of tensors
   (`innerpissa.loss`), looked up by its LossConfig kind in the tables SEPARATION, COHERENCE and MONOTONIC;
   `total_loss` weighs them.
4. Validation loss for the loop's early stopping; at the end, orient the sign on validation pairs so +c moves
   toward the positive persona.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .. import loss as L
from ..adapter import InnerPiSSATrainable
from ..batching import Batch, encode_pairs
from ..capture import capture
from ..concepts import ContrastPairs
from ..config import AdapterConfig, LossConfig, TrainConfig
from ..loop import TrainingDiverged, TrainResult
from ..models import decoder_layers, select_layers
from ..precision import autocast, bf16_frozen_linears, pick_device, resolve as resolve_precision


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global RNGs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---- forwards --------------------------------------------------------------------------------


def loss_basis(model: PreTrainedModel, cfg: LossConfig) -> tuple[int, torch.Tensor]:
    """(loss layer index, basis [d, k]): top-r left singular vectors U of the loss-layer modules, stacked."""
    layers = decoder_layers(model)
    li = round(cfg.loss_layer_frac * (len(layers) - 1))
    bases = []
    for n, m in layers[li].named_modules():
        if n.split(".")[-1] in cfg.loss_modules:
            W = (m.base_layer if hasattr(m, "base_layer") else m).weight.detach().float()
            U, _, _ = torch.linalg.svd(W, full_matrices=False)
            bases.append(U[:, : cfg.loss_r])
    if not bases:
        raise ValueError(f"no loss modules {cfg.loss_modules} in layer {li}")
    return li, torch.cat(bases, 1)


def in_basis(h: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Hidden states in the loss basis, in fp32 even under bf16 autocast (the separation compares small shifts)."""
    with torch.autocast(h.device.type, enabled=False):
        return h.float() @ basis


def forward_terms(
    model: PreTrainedModel, batch: Batch, layer: nn.Module, last_n: int, basis: torch.Tensor, tc: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward: (loss-layer states in the basis [2B, N, k], per-token suffix NLL [2B, tc])."""
    with capture({"h": layer}, last_n) as store:
        out = model(**batch.model_inputs(), logits_to_keep=tc + 1)
    nll = L.token_nll(out.logits[:, :-1], batch.input_ids[:, -tc:])
    return in_basis(store["h"], basis), nll


def forward_logits(
    model: PreTrainedModel, batch: Batch, layer: nn.Module, last_n: int, basis: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward over every position: (loss-layer states in the basis [2B, N, k], logits [2B, T-1, V] for tokens 1..T-1)."""
    with capture({"h": layer}, last_n) as store:
        out = model(**batch.model_inputs())
    return in_basis(store["h"], basis), out.logits[:, :-1]


def valid_logprobs(logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """fp32 log-softmax [N, V] of the positions `valid` [B, T] selects (row-major), so padding never reaches the
    vocabulary-wide ops (a quarter of the positions of a typical pair batch)."""
    return logits[valid].float().log_softmax(-1)


def spread(vals: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-position values [N] at the `valid` positions back to [B, T], zeros elsewhere (differentiable)."""
    return vals.new_zeros(valid.shape).masked_scatter(valid, vals)


def picked_nll(logp: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-token NLL [B, T] of `targets` [B, T] from the log-probs [N, V] at `valid`, zeros elsewhere."""
    return spread(-logp.gather(-1, targets[valid].unsqueeze(-1)).squeeze(-1), valid)


def suffix_span(batch: Batch) -> int:
    """Number of trailing positions that cover every row's suffix tokens."""
    T = batch.completion_mask.shape[1]
    first = batch.completion_mask.float().argmax(1)
    return min(int(T - first.min().item()), T - 1)  # a left-truncated row's first token has no predecessor


# ---- the reference (adapter off) -------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """Adapter-off quantities of a micro-batch (rows: chosen then rejected), right-aligned on the last tc positions."""

    hs: torch.Tensor  # [2n, N, k] loss-layer states in the basis
    nll: torch.Tensor  # [2n, tc] per-token NLL
    mask: torch.Tensor  # [2n, tc] suffix tokens
    coh_mask: torch.Tensor  # [2n, tc] positions the coherence barrier covers (the suffix, or every real token)
    logp: torch.Tensor | None = None  # [N, V] fp32 log-probs at the `valid` positions: only from a live reference
    valid: torch.Tensor | None = None  # [2n, T-1] bool: the positions `logp` holds, row-major (coherence ∪ suffix)
    entropy: torch.Tensor | None = None  # [2n, T-1] reference entropy at `valid` positions, 0 elsewhere


@dataclass(frozen=True)
class SequenceReference:
    """One cached sequence: loss-layer states [N, k] and, from the first position the coherence barrier covers,
    its per-token NLL, suffix mask and coherence mask (so they right-align to any later batch's span)."""

    hs: torch.Tensor
    nll: torch.Tensor
    mask: torch.Tensor
    coh_mask: torch.Tensor

    @classmethod
    def row(cls, ref: Reference, i: int) -> SequenceReference:
        """Row i of a micro-batch reference."""
        covered = ref.coh_mask[i].bool()
        start = int(covered.float().argmax()) if covered.any() else ref.mask.shape[1]
        return cls(ref.hs[i], ref.nll[i, start:], ref.mask[i, start:], ref.coh_mask[i, start:])


@dataclass(frozen=True)
class PairReference:
    """The cached reference of one contrast pair."""

    chosen: SequenceReference
    rejected: SequenceReference


def from_cache(cache: dict[int, PairReference], idx: list[int], tc: int, device: torch.device) -> Reference:
    """The reference of pairs `idx` from the cache, per-token rows right-aligned to the last `tc` positions."""
    seqs = [cache[i].chosen for i in idx] + [cache[i].rejected for i in idx]
    hs = torch.stack([s.hs for s in seqs])
    nll, mask, coh = (torch.zeros(len(seqs), tc, device=device) for _ in range(3))
    for row, s in enumerate(seqs):
        k = min(tc, s.nll.numel())
        nll[row, tc - k:] = s.nll[-k:]
        mask[row, tc - k:] = s.mask[-k:]
        coh[row, tc - k:] = s.coh_mask[-k:]
    return Reference(hs, nll, mask, coh)


# ---- the loss terms --------------------------------------------------------------------------


@dataclass
class Step:
    """What the terms of one micro-batch read: the reference, quantities derived from it, and each coefficient's
    steered pass (keyed by c = +1, −1; filled in as the passes run)."""

    lc: LossConfig
    ref: Reference
    n: int  # pairs
    proj_ref: torch.Tensor  # [n] reference projection on u
    diff_ref: torch.Tensor  # [n, k] reference chosen − rejected states (token mean)
    lp_zero: torch.Tensor  # [n] reference answer log-prob gap
    n_first: int  # rows of the flat log-probs (live reference) that belong to the first n sequences
    nll: dict[float, torch.Tensor] = field(default_factory=dict)  # [2n, tc]
    logp: dict[float, torch.Tensor | None] = field(default_factory=dict)  # flat log-probs (live reference only)
    proj: dict[float, torch.Tensor] = field(default_factory=dict)  # [n]
    delta: dict[float, torch.Tensor] = field(default_factory=dict)  # [n, k] change of chosen − rejected vs reference
    lp: dict[float, torch.Tensor] = field(default_factory=dict)  # [n] answer log-prob gap

    def rows(self, c: float) -> slice:
        """This coefficient's "positive" sequences: the chosen ones at +1, the rejected ones at −1."""
        return slice(0, self.n) if c > 0 else slice(self.n, 2 * self.n)


def nll_coherence(s: Step, c: float) -> torch.Tensor:
    """NLL barrier on this coefficient's positive sequences: per-token increase over the reference beyond τ."""
    rows = s.rows(c)
    return L.coherence(s.nll[c][rows], s.ref.nll[rows], s.ref.coh_mask[rows], s.lc.tau)


def tv_coherence(s: Step, c: float) -> torch.Tensor:
    """TV barrier on this coefficient's positive sequences, threshold scaled by the reference entropy."""
    part = slice(0, s.n_first) if c > 0 else slice(s.n_first, None)  # the same rows of the flat log-probs
    rows = s.rows(c)
    tv = spread(L.total_variation(s.logp[c][part], s.ref.logp[part]), s.ref.valid[rows])
    return L.tv_coherence(tv, s.ref.entropy[rows], s.ref.coh_mask[rows], s.lc.tv_alpha, scale=s.lc.coh_weight)


def entropy_monotonic(s: Step) -> torch.Tensor:
    """Per-pair hinge on the answer-gap changes, margin scaled by the pair's mean reference entropy."""
    h, cm = s.ref.entropy[:s.n], s.ref.coh_mask[:s.n]
    h_pair = (h * cm).sum(-1) / cm.sum(-1).clamp_min(1)
    return L.monotonic_entropy(s.lp[-1.0] - s.lp_zero, s.lp[1.0] - s.lp_zero, h_pair, s.lc.mono_frac)


# LossConfig kind -> term. Separation and coherence are computed per coefficient, the others once per micro-batch.
SEPARATION: dict[str, Callable[[Step, float], torch.Tensor]] = {
    "batch": lambda s, c: L.separation(s.proj[c], s.proj_ref, c),
    "pair": lambda s, c: L.separation_pairwise(s.proj[c], s.proj_ref, c),
}
JOINT_SEPARATION: dict[str, Callable[[Step], torch.Tensor]] = {  # one term for both c, logged half on each side
    "antiparallel": lambda s: 0.5 * L.antiparallel(s.delta[1.0], s.delta[-1.0], s.diff_ref),
}
COHERENCE: dict[str, Callable[[Step, float], torch.Tensor]] = {"nll": nll_coherence, "tv": tv_coherence}
MONOTONIC: dict[str, Callable[[Step], torch.Tensor]] = {
    "fixed": lambda s: L.monotonic(s.lp[-1.0].mean(), s.lp_zero.mean(), s.lp[1.0].mean(), s.lc.mono_margin),
    "entropy": entropy_monotonic,
}


def weights(lc: LossConfig, ramp: float) -> dict[str, float]:
    """Weight of each term group; the constraints ramp in with the warm-up factor `ramp`, and the TV barrier
    carries its weight inside (`loss.tv_coherence(scale=coh_weight)`)."""
    coh = 1.0 if lc.coh_kind == "tv" else lc.coh_weight
    return {"sep": lc.sep_weight, "coh": ramp * coh, "mono": ramp * lc.mono_weight}


def total_loss(terms: dict[str, torch.Tensor], lc: LossConfig, ramp: float) -> torch.Tensor:
    """sep·(sep_pos + sep_neg) + coh·(w₊·coh_pos + w₋·coh_neg) + mono·mono with the `weights`, where (w₊, w₋) are
    `loss.adaptive_weights` of the separation terms if `lc.adaptive`, else (1, 1)."""
    w = weights(lc, ramp)
    w_pos, w_neg = L.adaptive_weights(terms["sep_pos"], terms["sep_neg"]) if lc.adaptive else (1.0, 1.0)
    return (w["sep"] * (terms["sep_pos"] + terms["sep_neg"])
            + w["coh"] * (w_pos * terms["coh_pos"] + w_neg * terms["coh_neg"])
            + w["mono"] * terms["mono"])


# ---- the objective the loop trains (loop.Objective) ------------------------------------------


class TrainableAdapter(Protocol):
    """What the objective needs from a steerable parameterisation (`adapter.InnerPiSSATrainable`; the LoRA family's
    in `steerers.peft_lora`)."""

    # its layers use the frozen base weights only through their forward, so a bf16 fit may hold bf16 copies of
    # them (`precision.bf16_frozen_linears`) with bit-identical results
    base_weights_in_forward_only: bool

    def attach(self, objective: ReprPOObjective) -> None: ...
    def parameters(self) -> list[nn.Parameter]: ...
    def steer(self, c: float) -> contextlib.AbstractContextManager: ...
    def flip(self) -> None: ...


class ReprPOObjective:
    """The ReprPO objective (model, data, reference caches, u) for `loop.Loop`; `step_loss` composes the terms."""

    def __init__(
        self,
        model: PreTrainedModel,
        tok: PreTrainedTokenizerBase,
        train_pairs: ContrastPairs,
        val_pairs: ContrastPairs,
        adapter: AdapterConfig | TrainableAdapter,
        loss_cfg: LossConfig,
        train_cfg: TrainConfig,
        progress: bool = True,
    ) -> None:
        self.model, self.tok = model, tok
        self.adapter = InnerPiSSATrainable(model, adapter) if isinstance(adapter, AdapterConfig) else adapter
        self.lcfg, self.tcfg = loss_cfg, train_cfg
        self.attached = False
        self.frozen_weights: contextlib.ExitStack | None = None  # a run's scope for bf16 frozen linears (see setup)
        self.progress = progress
        self.device = pick_device(train_cfg.device)
        n_train = min(len(train_pairs), train_cfg.n_train or len(train_pairs))
        self.train_pairs = train_pairs.subset(list(range(n_train)))
        self.val_pairs = val_pairs.subset(list(range(min(len(val_pairs), train_cfg.n_val))))
        self.li, self.basis = loss_basis(model, loss_cfg)
        self.basis = self.basis.to(self.device)
        self.loss_layer = decoder_layers(model)[self.li]
        self.precision = resolve_precision(train_cfg.precision, self.device)  # bf16: autocast on every forward
        if loss_cfg.adapters_before_loss and isinstance(adapter, AdapterConfig):
            adapted = select_layers(len(decoder_layers(model)), adapter.layers, adapter.layer_range)
            if max(adapted) >= self.li:
                raise ValueError(f"adapters_before_loss: adapted layers {adapted} reach the loss layer {self.li}; "
                                 "lower adapter.layer_range or raise loss.loss_layer_frac")
        per_epoch = max(1, len(self.train_pairs) // min(train_cfg.batch_size, len(self.train_pairs)) // train_cfg.grad_accum)
        if train_cfg.steps is not None:
            self.total_steps = train_cfg.steps
        else:
            self.total_steps = max(1, math.ceil(train_cfg.epochs * per_epoch))
            if train_cfg.max_steps is not None:
                self.total_steps = min(self.total_steps, train_cfg.max_steps)
        # live reference: TV and the entropy margin need the frozen model's logits at every position (too big to cache)
        self.live_ref = loss_cfg.coh_kind == "tv" or loss_cfg.mono_kind == "entropy"
        self.ramp = 1.0  # constraint warm-up factor of the current optimizer step (1 when validating)
        self.validates, self.shown = True, ("loss", "sep_pos", "sep_neg", "coh_pos", "coh_neg", "mono")
        self.early_stop_from = math.ceil(loss_cfg.warmup * self.total_steps)  # once the constraints are fully in

    # ---- data ------------------------------------------------------------------------------
    def encode(self, pairs: ContrastPairs, idx: list[int]) -> Batch:
        """Pairs `idx` as one batch on the device (rows: chosen then rejected)."""
        return encode_pairs(self.tok, pairs.subset(idx), self.tcfg.max_length).to(self.device)

    def _batches(self, n: int) -> list[list[int]]:
        """Deterministic micro-batch index lists for the whole run (a function of the seed only)."""
        g = torch.Generator().manual_seed(self.tcfg.seed)
        need = self.total_steps * self.tcfg.grad_accum
        bs = min(self.tcfg.batch_size, n)
        out: list[list[int]] = []
        while len(out) < need:
            perm = torch.randperm(n, generator=g).tolist()
            out += [perm[i: i + bs] for i in range(0, n - bs + 1, bs)]
        return out[:need]

    def _ctx(self, c: float) -> contextlib.AbstractContextManager:
        """Steer at c (c = 0: the frozen model) in the run's precision, so reference and steered passes match."""
        stack = contextlib.ExitStack()
        stack.enter_context(autocast(self.precision, self.device))
        if self.attached and c != 0:
            stack.enter_context(self.adapter.steer(c))
        return stack

    def _span(self, b: Batch) -> int:
        """Trailing positions the losses read: every predicted token (coherence on all positions) or the suffix."""
        return b.input_ids.shape[1] - 1 if self.lcfg.coh_positions == "all" else suffix_span(b)

    @staticmethod
    def _coh_mask(b: Batch) -> torch.Tensor:
        """[2B, T-1]: predicted tokens 1..T-1 whose token and predecessor are both real (not padding)."""
        attn = b.attention_mask.float()
        return attn[:, 1:] * attn[:, :-1]

    # ---- reference -------------------------------------------------------------------------
    @torch.no_grad()
    def _reference(self, pairs: ContrastPairs, idx: list[int]) -> Reference:
        """Adapter-off states and NLLs for pairs `idx` (rows: chosen then rejected)."""
        b = self.encode(pairs, idx)
        tc = self._span(b)
        with self._ctx(0.0):
            hs, nll = forward_terms(self.model, b, self.loss_layer, self.lcfg.last_n_tokens, self.basis, tc)
        mask = b.completion_mask[:, -tc:].float()
        return Reference(hs, nll, mask, self._coh_mask(b)[:, -tc:] if self.lcfg.coh_positions == "all" else mask)

    @torch.no_grad()
    def _live_reference(self, b: Batch) -> Reference:
        """Adapter-off states, log-probs and entropies of this micro-batch at every real position (nothing cached)."""
        with self._ctx(0.0):
            hs, logits = forward_logits(self.model, b, self.loss_layer, self.lcfg.last_n_tokens, self.basis)
        mask = b.completion_mask[:, 1:].float()
        coh = self._coh_mask(b) if self.lcfg.coh_positions == "all" else mask
        valid = (coh + mask) > 0
        logp = valid_logprobs(logits, valid)
        nll = picked_nll(logp, b.input_ids[:, 1:], valid)
        return Reference(hs, nll, mask, coh, logp, valid, spread(L.token_entropy(logp), valid))

    def _ref_for(self, idx: list[int], cache: dict[int, PairReference] | None, pairs: ContrastPairs, tc: int) -> Reference:
        """Reference for a micro-batch: from the cache (right-aligned to tc) or recomputed now."""
        return self._reference(pairs, idx) if cache is None else from_cache(cache, idx, tc, self.device)

    def _build_cache(self, pairs: ContrastPairs, idx: list[int]) -> dict[int, PairReference]:
        """The reference of every pair in `idx`, computed in chunks of 16."""
        out = {}
        bs = 16
        for s in tqdm(range(0, len(idx), bs), desc="reference cache", disable=not self.progress, leave=False):
            chunk = idx[s: s + bs]
            ref = self._reference(pairs, chunk)
            n = len(chunk)
            for j, i in enumerate(chunk):
                out[i] = PairReference(SequenceReference.row(ref, j), SequenceReference.row(ref, n + j))
        return out

    # ---- loss ------------------------------------------------------------------------------
    def _steered(self, b: Batch, ref: Reference, tc: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One forward as the model is now: (loss-layer states, per-token NLL [2B, tc], flat log-probs at the
        reference's `valid` positions, or None when the reference is cached)."""
        if ref.logp is None:
            hs, nll = forward_terms(self.model, b, self.loss_layer, self.lcfg.last_n_tokens, self.basis, tc)
            return hs, nll, None
        hs, logits = forward_logits(self.model, b, self.loss_layer, self.lcfg.last_n_tokens, self.basis)
        logp = valid_logprobs(logits, ref.valid)
        return hs, picked_nll(logp, b.input_ids[:, 1:], ref.valid), logp

    def step_loss(self, b: Batch, ref: Reference, u: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Total ReprPO loss for one micro-batch (rows: chosen then rejected) and its logged terms.

        Each term is the table entry of its LossConfig kind (a switched-off term is 0); the coherence and
        monotonic weights are scaled by the warm-up factor `self.ramp`.
        """
        lc, n = self.lcfg, len(b) // 2
        tc = ref.nll.shape[1]
        mask = b.completion_mask[:, -tc:].float()
        s = Step(lc, ref, n, proj_ref=L.projection(ref.hs[:n], ref.hs[n:], u), diff_ref=(ref.hs[:n] - ref.hs[n:]).mean(1),
                 lp_zero=L.seq_logp(ref.nll[:n], ref.mask[:n]) - L.seq_logp(ref.nll[n:], ref.mask[n:]),
                 n_first=int(ref.valid[:n].sum()) if ref.valid is not None else 0)
        terms: dict[str, torch.Tensor] = {}
        logged: dict[str, float] = {}
        zero = torch.zeros((), device=self.device)
        for c, tag in ((1.0, "pos"), (-1.0, "neg")):
            with self._ctx(c):
                hs, s.nll[c], s.logp[c] = self._steered(b, ref, tc)
            s.proj[c] = L.projection(hs[:n], hs[n:], u)
            logged[f"shift_{tag}"] = float(L.relative_shift(s.proj[c], s.proj_ref).detach())
            s.delta[c] = (hs[:n] - hs[n:]).mean(1) - s.diff_ref
            terms[f"sep_{tag}"] = SEPARATION[lc.sep_kind](s, c) if lc.separation and lc.sep_kind in SEPARATION else zero
            terms[f"coh_{tag}"] = COHERENCE[lc.coh_kind](s, c) if lc.coherence else zero
            s.lp[c] = L.seq_logp(s.nll[c][:n], mask[:n]) - L.seq_logp(s.nll[c][n:], mask[n:])
        if lc.separation and lc.sep_kind in JOINT_SEPARATION:
            terms["sep_pos"] = terms["sep_neg"] = JOINT_SEPARATION[lc.sep_kind](s)
        terms["mono"] = MONOTONIC[lc.mono_kind](s) if lc.monotonic else zero
        total = total_loss(terms, lc, self.ramp)
        for k, v in terms.items():
            logged[k] = float(v.detach())
            if not math.isfinite(logged[k]):
                raise TrainingDiverged(f"loss term {k!r} became {logged[k]}")
        logged["loss"] = float(total.detach())
        logged["dlp_pos"] = float((s.lp[1.0] - s.lp_zero).mean().detach())
        logged["dlp_neg"] = float((s.lp[-1.0] - s.lp_zero).mean().detach())
        return total, logged

    # ---- loop.Objective --------------------------------------------------------------------
    def setup(self) -> None:
        """Fix the batch order, cache the reference, compute u, attach the adapter.

        Seeds the global RNGs first, so the adapter's random init depends on the seed alone, not on what ran
        between constructing the objective and running it."""
        seed_everything(self.tcfg.seed)
        self.batches = self._batches(len(self.train_pairs))
        used = sorted({i for b in self.batches for i in b})
        ref_cache = self._build_cache(self.train_pairs, used)
        diffs = [p.chosen.hs - p.rejected.hs for p in ref_cache.values()]
        self.u = L.preference_direction(torch.stack(diffs), self.lcfg.direction_topk)
        self.cache = ref_cache if self.tcfg.cache_reference else None  # None: recompute the reference every step
        self.val_cache = self._build_cache(self.val_pairs, list(range(len(self.val_pairs))))
        self.adapter.attach(self)
        self.attached = True
        if self.frozen_weights is not None and self.precision == "bf16" and self.adapter.base_weights_in_forward_only:
            self.frozen_weights.enter_context(bf16_frozen_linears(self.model))  # after the SVDs: they read fp32 weights

    def parameters(self) -> list[nn.Parameter]:
        """The adapter's trainable tensors."""
        return self.adapter.parameters()

    def loss(self, step: int, micro: int) -> tuple[torch.Tensor, dict[str, float]]:
        """ReprPO loss of micro-batch `micro` of optimizer step `step`, with the constraint warm-up of that step."""
        idx = self.batches[step * self.tcfg.grad_accum + micro]
        b = self.encode(self.train_pairs, idx)
        ref = self._live_reference(b) if self.live_ref else self._ref_for(idx, self.cache, self.train_pairs, self._span(b))
        self.ramp = L.warmup_factor(step, self.total_steps, self.lcfg.warmup)
        total, logged = self.step_loss(b, ref, self.u)
        return total, {**logged, "ramp": self.ramp}  # the loss curve marks the warm-up from it

    def evaluate(self) -> dict[str, float]:
        """Validation loss and shift, for the loop's log and early stopping."""
        val_loss, val_shift = self.validate(self.u)
        return {"val_loss": val_loss, "val_shift": val_shift}

    def finish(self, result: TrainResult) -> None:
        """Orient the sign of the best adapter."""
        self.orient(result)

    # ---- validation ------------------------------------------------------------------------
    @torch.no_grad()
    def validation_step(self, u: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """`step_loss` on the validation pairs, the constraints fully in (ramp 1)."""
        idx = list(range(len(self.val_pairs)))
        b = self.encode(self.val_pairs, idx)
        ref = self._live_reference(b) if self.live_ref else self._ref_for(idx, self.val_cache, self.val_pairs, self._span(b))
        self.ramp = 1.0
        return self.step_loss(b, ref, u)

    def validate(self, u: torch.Tensor) -> tuple[float, float]:
        """(validation loss, mean projection shift +1 vs −1) on the validation pairs."""
        total, logged = self.validation_step(u)
        return float(total), logged["shift_pos"] - logged["shift_neg"]

    @torch.no_grad()
    def orient(self, result: TrainResult) -> None:
        """Flip the adapter (negate its parameters: exactly c -> −c) if +c moves validation pairs the wrong way."""
        _, shift = self.validate(self.u)
        if shift < 0:
            self.adapter.flip()
            shift = -shift
            result.sign_flipped = True
        result.val_shift = shift
