"""Train an InnerPiSSA adapter with ReprPO, top to bottom.

1. Reference pass (adapter off, once): hidden states at the loss layer (last N tokens, in the loss
   basis) and per-token log-probs of the suffix, for every pair used. The base model is frozen, so
   these never change; caching them saves one forward per step.
2. Preference direction u = normalised mean chosen−rejected difference of the cached states.
3. Each step, for c = +1 and c = −1: steered forward on chosen+rejected, then
   separation (move the projection on u up at +1, down at −1) + coherence barrier (per-token NLL
   increase over the reference beyond τ, on that coefficient's "positive" sequence) + monotonic
   hinge on the answer log-prob gap across c = −1, 0, +1.
4. Validate, early-stop on the validation loss, checkpoint atomically (all in `loop.Loop`, the loop every
   trainable method shares; `Trainer` is its ReprPO objective), and finally orient the sign on validation
   pairs so +c moves toward the positive persona.
"""

from __future__ import annotations

import contextlib
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from . import loss as L
from . import adapter as A
from .batching import Batch, encode_pairs
from .capture import capture
from .concepts import ContrastPairs
from .config import AdapterConfig, LossConfig, TrainConfig
from .loop import Loop, TrainingDiverged, TrainResult
from .models import decoder_layers, select_layers
from .precision import autocast, bf16_frozen_linears, resolve as resolve_precision


def pick_device(name: str) -> torch.device:
    """`auto` -> cuda if available else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


@dataclass
class _Cache:
    """Reference (adapter-off) quantities per pair, right-aligned on the suffix tokens."""

    hs: torch.Tensor  # [2n, N, k]
    nll: torch.Tensor  # [2n, tcmax]
    mask: torch.Tensor  # [2n, tcmax]
    logp: torch.Tensor | None = None  # [N, V] fp32 log-probs at the `valid` positions: only from a live reference
    coh_mask: torch.Tensor | None = None  # positions the coherence barrier covers (None: the suffix `mask`)
    valid: torch.Tensor | None = None  # [2n, T-1] bool: the positions `logp` holds, row-major (coherence ∪ suffix)
    entropy: torch.Tensor | None = None  # [2n, T-1] reference entropy at `valid` positions, 0 elsewhere


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


def _tc(batch: Batch) -> int:
    """Number of trailing positions that cover every row's suffix tokens."""
    T = batch.completion_mask.shape[1]
    first = batch.completion_mask.float().argmax(1)
    return min(int(T - first.min().item()), T - 1)  # a left-truncated row's first token has no predecessor


class TrainableAdapter(Protocol):
    """What the loop needs from a steerable parameterisation (InnerPiSSA here; LoRA-family in steerers/)."""

    # its layers use the frozen base weights only through their forward, so a bf16 fit may hold bf16 copies of
    # them (`precision.bf16_frozen_linears`) with bit-identical results
    base_weights_in_forward_only: bool

    def attach(self, trainer: "Trainer") -> None: ...
    def parameters(self) -> list[nn.Parameter]: ...
    def steer(self, c: float) -> contextlib.AbstractContextManager: ...
    def flip(self) -> None: ...


class InnerPiSSATrainable:
    """InnerPiSSA layers on `model`; flipping negates every parameter, which is exactly c -> −c."""

    base_weights_in_forward_only = True  # the base layer is called, never read (U, S, V are buffers of their own)

    def __init__(self, model: PreTrainedModel, cfg: AdapterConfig) -> None:
        self.model, self.cfg = model, cfg

    def attach(self, trainer: "Trainer") -> None:
        """Put a fresh adapter with this config on the model; an existing one is removed first (a new fit
        never continues an old adapter: resuming goes through the checkpoint)."""
        A.remove(self.model)
        contrast = None
        if self.cfg.dims == "data":
            idx = list(range(min(64, len(trainer.train_pairs))))
            b = trainer._encode(trainer.train_pairs, idx)
            names = A.target_names(self.model, self.cfg)
            contrast = A.collect_module_inputs(self.model, names, b.model_inputs(), len(b) // 2, trainer.lcfg.last_n_tokens)
        A.attach(self.model, self.cfg, contrast=contrast)

    def parameters(self) -> list[nn.Parameter]:
        return A.trainable_parameters(self.model)

    def steer(self, c: float) -> contextlib.AbstractContextManager:
        return A.steer(self.model, c)

    @torch.no_grad()
    def flip(self) -> None:
        for p in self.parameters():
            p.neg_()


class Trainer:
    """The ReprPO objective (model, data, reference caches, u) and its `loop`; `run()` returns a TrainResult."""

    def __init__(
        self,
        model: PreTrainedModel,
        tok: PreTrainedTokenizerBase,
        train_pairs: ContrastPairs,
        val_pairs: ContrastPairs,
        adapter: AdapterConfig | TrainableAdapter,
        loss_cfg: LossConfig,
        train_cfg: TrainConfig,
        ckpt_dir: Path | None = None,
        progress: bool = True,
    ) -> None:
        self.model, self.tok = model, tok
        self.adapter = InnerPiSSATrainable(model, adapter) if isinstance(adapter, AdapterConfig) else adapter
        self.lcfg, self.tcfg = loss_cfg, train_cfg
        self.attached = False
        self._weights: contextlib.ExitStack | None = None  # set by run(): frozen linears cast to bf16 once per fit
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
        self.loop = Loop(self, train_cfg, ckpt_dir, progress)

    # ---- data ------------------------------------------------------------------------------
    def _encode(self, pairs: ContrastPairs, idx: list[int]) -> Batch:
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

    @torch.no_grad()
    def _reference(self, pairs: ContrastPairs, idx: list[int]) -> _Cache:
        """Adapter-off states and NLLs for pairs `idx` (rows: chosen then rejected)."""
        b = self._encode(pairs, idx)
        tc = self._span(b)
        with self._ctx(0.0):
            hs, nll = forward_terms(self.model, b, self.loss_layer, self.lcfg.last_n_tokens, self.basis, tc)
        mask = b.completion_mask[:, -tc:].float()
        return _Cache(hs, nll, mask, None, self._coh_mask(b)[:, -tc:] if self.lcfg.coh_positions == "all" else mask)

    def _span(self, b: Batch) -> int:
        """Trailing positions the losses read: every predicted token (coherence on all positions) or the suffix."""
        return b.input_ids.shape[1] - 1 if self.lcfg.coh_positions == "all" else _tc(b)

    @staticmethod
    def _coh_mask(b: Batch) -> torch.Tensor:
        """[2B, T-1]: predicted tokens 1..T-1 whose token and predecessor are both real (not padding)."""
        attn = b.attention_mask.float()
        return attn[:, 1:] * attn[:, :-1]

    @torch.no_grad()
    def _live_reference(self, b: Batch) -> _Cache:
        """Adapter-off states, log-probs and entropies of this micro-batch at every real position (nothing cached)."""
        with self._ctx(0.0):
            hs, logits = forward_logits(self.model, b, self.loss_layer, self.lcfg.last_n_tokens, self.basis)
        mask = b.completion_mask[:, 1:].float()
        coh = self._coh_mask(b) if self.lcfg.coh_positions == "all" else mask
        valid = (coh + mask) > 0
        logp = valid_logprobs(logits, valid)
        nll = picked_nll(logp, b.input_ids[:, 1:], valid)
        return _Cache(hs, nll, mask, logp, coh, valid, spread(L.token_entropy(logp), valid))

    def _ctx(self, c: float) -> contextlib.AbstractContextManager:
        """Steer at c (c = 0: the frozen model) in the run's precision, so reference and steered passes match."""
        stack = contextlib.ExitStack()
        stack.enter_context(autocast(self.precision, self.device))
        if self.attached and c != 0:
            stack.enter_context(self.adapter.steer(c))
        return stack

    def _ref_for(self, idx: list[int], cache: dict[int, tuple] | None, pairs: ContrastPairs, tc: int) -> _Cache:
        """Reference for a micro-batch: from the cache (right-aligned to tc) or recomputed now."""
        if cache is None:
            return self._reference(pairs, idx)
        n = len(idx)
        rows = [cache[i] for i in idx]
        hs = torch.stack([r[0] for r in rows] + [r[3] for r in rows])
        nll, mask, coh = (torch.zeros(2 * n, tc, device=self.device) for _ in range(3))
        for j, r in enumerate(rows):
            for side, (v, m, h) in enumerate(((r[1], r[2], r[6]), (r[4], r[5], r[7]))):
                k = min(tc, v.numel())
                nll[side * n + j, tc - k:] = v[-k:]
                mask[side * n + j, tc - k:] = m[-k:]
                coh[side * n + j, tc - k:] = h[-k:]
        return _Cache(hs, nll, mask, None, coh)

    def _build_cache(self, pairs: ContrastPairs, idx: list[int]) -> dict[int, tuple]:
        """Per-pair reference tensors: (hs_cho, nll_cho, mask_cho, hs_rej, nll_rej, mask_rej, coh_cho, coh_rej).

        The per-token rows start at the first position the coherence mask covers (the suffix, or every real
        token with coh_positions="all"), so they are right-aligned to any later batch's span."""
        out = {}
        bs = 16
        for s in tqdm(range(0, len(idx), bs), desc="reference cache", disable=not self.progress, leave=False):
            chunk = idx[s: s + bs]
            ref = self._reference(pairs, chunk)
            n = len(chunk)
            for j, i in enumerate(chunk):
                mc, mr = ref.coh_mask[j].bool(), ref.coh_mask[n + j].bool()
                start_c = int(mc.float().argmax()) if mc.any() else ref.mask.shape[1]
                start_r = int(mr.float().argmax()) if mr.any() else ref.mask.shape[1]
                out[i] = (ref.hs[j], ref.nll[j, start_c:], ref.mask[j, start_c:],
                          ref.hs[n + j], ref.nll[n + j, start_r:], ref.mask[n + j, start_r:],
                          ref.coh_mask[j, start_c:], ref.coh_mask[n + j, start_r:])
        return out

    # ---- loss ------------------------------------------------------------------------------
    def step_loss(self, b: Batch, ref: _Cache, u: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Total ReprPO loss for one micro-batch (rows: chosen then rejected) and its logged terms.

        Composes the terms chosen in LossConfig (sep_kind, coh_kind/coh_positions, mono_kind); the
        coherence and monotonic weights are scaled by the warm-up factor `self.ramp`.
        """
        lc, n = self.lcfg, len(b) // 2
        tc = ref.nll.shape[1]
        mask = b.completion_mask[:, -tc:].float()
        cmask = ref.coh_mask if ref.coh_mask is not None else mask
        proj_ref = L.projection(ref.hs[:n], ref.hs[n:], u)
        diff_ref = (ref.hs[:n] - ref.hs[n:]).mean(1)
        lp_zero = L.seq_logp(ref.nll[:n], ref.mask[:n]) - L.seq_logp(ref.nll[n:], ref.mask[n:])  # per pair
        terms: dict[str, torch.Tensor] = {}
        logged: dict[str, float] = {}
        lp: dict[float, torch.Tensor] = {}
        delta: dict[float, torch.Tensor] = {}
        zero = torch.zeros((), device=self.device)
        n_first = int(ref.valid[:n].sum()) if ref.valid is not None else 0  # flat log-prob rows of the first n rows
        for c, tag in ((1.0, "pos"), (-1.0, "neg")):
            with self._ctx(c):
                if ref.logp is None:
                    hs, nll = forward_terms(self.model, b, self.loss_layer, self.lcfg.last_n_tokens, self.basis, tc)
                    logp = None
                else:
                    hs, logits = forward_logits(self.model, b, self.loss_layer, self.lcfg.last_n_tokens, self.basis)
                    logp = valid_logprobs(logits, ref.valid)
                    nll = picked_nll(logp, b.input_ids[:, 1:], ref.valid)
            proj = L.projection(hs[:n], hs[n:], u)
            logged[f"shift_{tag}"] = float(L.relative_shift(proj, proj_ref).detach())
            delta[c] = (hs[:n] - hs[n:]).mean(1) - diff_ref
            if not lc.separation or lc.sep_kind == "antiparallel":
                terms[f"sep_{tag}"] = zero
            elif lc.sep_kind == "pair":
                terms[f"sep_{tag}"] = L.separation_pairwise(proj, proj_ref, c)
            else:
                terms[f"sep_{tag}"] = L.separation(proj, proj_ref, c)
            rows = slice(0, n) if c > 0 else slice(n, 2 * n)  # this coefficient's "positive" sequence
            if not lc.coherence:
                terms[f"coh_{tag}"] = zero
            elif lc.coh_kind == "tv":
                part = slice(0, n_first) if c > 0 else slice(n_first, None)  # the same rows of the flat log-probs
                tv = spread(L.total_variation(logp[part], ref.logp[part]), ref.valid[rows])
                terms[f"coh_{tag}"] = L.tv_coherence(tv, ref.entropy[rows], cmask[rows], lc.tv_alpha,
                                                     scale=lc.coh_weight)
            else:
                terms[f"coh_{tag}"] = L.coherence(nll[rows], ref.nll[rows], cmask[rows], lc.tau)
            lp[c] = L.seq_logp(nll[:n], mask[:n]) - L.seq_logp(nll[n:], mask[n:])
        if lc.separation and lc.sep_kind == "antiparallel":  # one shared term, logged half on each side
            terms["sep_pos"] = terms["sep_neg"] = 0.5 * L.antiparallel(delta[1.0], delta[-1.0], diff_ref)
        if not lc.monotonic:
            terms["mono"] = zero
        elif lc.mono_kind == "entropy":
            h = ref.entropy[:n]
            h_pair = (h * cmask[:n]).sum(-1) / cmask[:n].sum(-1).clamp_min(1)
            terms["mono"] = L.monotonic_entropy(lp[-1.0] - lp_zero, lp[1.0] - lp_zero, h_pair, lc.mono_frac)
        else:
            terms["mono"] = L.monotonic(lp[-1.0].mean(), lp_zero.mean(), lp[1.0].mean(), lc.mono_margin)
        w_pos, w_neg = L.adaptive_weights(terms["sep_pos"], terms["sep_neg"]) if lc.adaptive else (1.0, 1.0)
        coh_w = 1.0 if lc.coh_kind == "tv" else lc.coh_weight  # the TV barrier carries its weight inside
        total = (
            lc.sep_weight * (terms["sep_pos"] + terms["sep_neg"])
            + self.ramp * coh_w * (w_pos * terms["coh_pos"] + w_neg * terms["coh_neg"])
            + self.ramp * lc.mono_weight * terms["mono"]
        )
        for k, v in terms.items():
            logged[k] = float(v.detach())
            if not math.isfinite(logged[k]):
                raise TrainingDiverged(f"loss term {k!r} became {logged[k]}")
        logged["loss"] = float(total.detach())
        logged["dlp_pos"] = float((lp[1.0] - lp_zero).mean().detach())
        logged["dlp_neg"] = float((lp[-1.0] - lp_zero).mean().detach())
        return total, logged

    # ---- the objective the loop trains (loop.Objective) ---------------------------------------
    def setup(self) -> None:
        """Fix the batch order, cache the reference, compute u, attach the adapter.

        Seeds the global RNGs first, so the adapter's random init depends on the seed alone, not on what ran
        between constructing the trainer and running it."""
        seed_everything(self.tcfg.seed)
        self.batches = self._batches(len(self.train_pairs))
        used = sorted({i for b in self.batches for i in b})
        ref_cache = self._build_cache(self.train_pairs, used)
        self.u = L.preference_direction(torch.stack([r[0] - r[3] for r in ref_cache.values()]), self.lcfg.direction_topk)
        self.cache = ref_cache if self.tcfg.cache_reference else None  # None: recompute the reference every step
        self.val_cache = self._build_cache(self.val_pairs, list(range(len(self.val_pairs))))
        self.adapter.attach(self)
        self.attached = True
        if self._weights is not None and self.precision == "bf16" and self.adapter.base_weights_in_forward_only:
            self._weights.enter_context(bf16_frozen_linears(self.model))  # after the SVDs: they read fp32 weights

    def parameters(self) -> list[nn.Parameter]:
        """The adapter's trainable tensors."""
        return self.adapter.parameters()

    def loss(self, step: int, micro: int) -> tuple[torch.Tensor, dict[str, float]]:
        """ReprPO loss of micro-batch `micro` of optimizer step `step`, with the constraint warm-up of that step."""
        idx = self.batches[step * self.tcfg.grad_accum + micro]
        b = self._encode(self.train_pairs, idx)
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

    @torch.no_grad()
    def validate(self, u: torch.Tensor) -> tuple[float, float]:
        """(validation loss, mean projection shift +1 vs −1) on the validation pairs."""
        idx = list(range(len(self.val_pairs)))
        b = self._encode(self.val_pairs, idx)
        ref = self._live_reference(b) if self.live_ref else self._ref_for(idx, self.val_cache, self.val_pairs, self._span(b))
        self.ramp = 1.0
        total, logged = self.step_loss(b, ref, u)
        return float(total), logged["shift_pos"] - logged["shift_neg"]

    # ---- training (the shared loop) -----------------------------------------------------------
    def prepare(self) -> None:
        """Set up (see `setup`) and build the loop's optimizer, ready for `optimizer_step`."""
        self.loop.start()

    def optimizer_step(self, step: int) -> list[dict[str, float]]:
        """One optimizer step of the loop; returns each micro-batch's logged terms."""
        return self.loop.optimizer_step(step)

    def run(self, resume: bool = False, stop_after: int | None = None) -> TrainResult:
        """Train for `total_steps` (fixed `steps`, or `epochs` capped by `max_steps`) or until early stopping.

        `stop_after` simulates a crash.
        """
        with contextlib.ExitStack() as self._weights:  # the bf16 weight copies' scope: this run (see setup)
            try:
                return self.loop.run(TrainResult(precision=self.precision), resume, stop_after)
            finally:
                self._weights = None

    @torch.no_grad()
    def orient(self, result: TrainResult) -> None:
        """Flip the adapter (negate its parameters: exactly c -> −c) if +c moves validation pairs the wrong way."""
        _, shift = self.validate(self.u)
        if shift < 0:
            self.adapter.flip()
            shift = -shift
            result.sign_flipped = True
        result.val_shift = shift
