"""Train an InnerPiSSA adapter with ReprPO, top to bottom.

1. Reference pass (adapter off, once): hidden states at the loss layer (last N tokens, in the loss
   basis) and per-token log-probs of the suffix, for every pair used. The base model is frozen, so
   these never change; caching them saves one forward per step.
2. Preference direction u = normalised mean chosen−rejected difference of the cached states.
3. Each step, for c = +1 and c = −1: steered forward on chosen+rejected, then
   separation (move the projection on u up at +1, down at −1) + coherence barrier (per-token NLL
   increase over the reference beyond τ, on that coefficient's "positive" sequence) + monotonic
   hinge on the answer log-prob gap across c = −1, 0, +1.
4. Validate, early-stop on the validation loss, checkpoint atomically, and finally orient the sign
   on validation pairs so +c moves toward the positive persona.
"""

from __future__ import annotations

import contextlib
import math
import random
from typing import Protocol
from dataclasses import dataclass, field
from pathlib import Path

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
from .io import atomic_save_tensors, atomic_write_json, load_tensors, read_json
from .models import decoder_layers, select_layers
from .precision import autocast, resolve as resolve_precision


class TrainingDiverged(RuntimeError):
    """A loss term became NaN/inf; the adapter was rolled back to the last good checkpoint."""


@dataclass
class TrainResult:
    """What training produced: per-step log, best validation step, whether the sign was flipped."""

    history: list[dict] = field(default_factory=list)
    best_step: int = 0
    best_val: float = math.inf
    sign_flipped: bool = False
    val_shift: float = 0.0  # mean projection(+1) − projection(−1) on validation pairs, after orientation
    precision: str = "fp32"  # the resolved compute precision (innerpissa.precision)


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
    logits: torch.Tensor | None = None  # [2n, T-1, V]: only from a live reference (every position)
    coh_mask: torch.Tensor | None = None  # positions the coherence barrier covers (None: the suffix `mask`)


def forward_logits(
    model: PreTrainedModel, batch: Batch, layer: nn.Module, last_n: int, basis: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward over every position: (loss-layer states in the basis [2B, N, k], logits [2B, T-1, V] for tokens 1..T-1)."""
    with capture({"h": layer}, last_n) as store:
        out = model(**batch.model_inputs())
    return in_basis(store["h"], basis), out.logits[:, :-1]


def _tc(batch: Batch) -> int:
    """Number of trailing positions that cover every row's suffix tokens."""
    T = batch.completion_mask.shape[1]
    first = batch.completion_mask.float().argmax(1)
    return min(int(T - first.min().item()), T - 1)  # a left-truncated row's first token has no predecessor


class TrainableAdapter(Protocol):
    """What the loop needs from a steerable parameterisation (InnerPiSSA here; LoRA-family in steerers/)."""

    def attach(self, trainer: "Trainer") -> None: ...
    def parameters(self) -> list[nn.Parameter]: ...
    def steer(self, c: float) -> contextlib.AbstractContextManager: ...
    def flip(self) -> None: ...


class InnerPiSSATrainable:
    """InnerPiSSA layers on `model`; flipping negates every parameter, which is exactly c -> −c."""

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
    """Holds the model, data, caches and optimizer; `run()` trains and returns a TrainResult."""

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
        self.ckpt_dir, self.progress = ckpt_dir, progress
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
        """Adapter-off states and logits of this micro-batch at every position (nothing cached)."""
        with self._ctx(0.0):
            hs, logits = forward_logits(self.model, b, self.loss_layer, self.lcfg.last_n_tokens, self.basis)
        nll = L.token_nll(logits, b.input_ids[:, 1:])
        mask = b.completion_mask[:, 1:].float()
        return _Cache(hs, nll, mask, logits, self._coh_mask(b) if self.lcfg.coh_positions == "all" else mask)

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
        for c, tag in ((1.0, "pos"), (-1.0, "neg")):
            with self._ctx(c):
                if ref.logits is None:
                    hs, nll = forward_terms(self.model, b, self.loss_layer, self.lcfg.last_n_tokens, self.basis, tc)
                    logits = None
                else:
                    hs, logits = forward_logits(self.model, b, self.loss_layer, self.lcfg.last_n_tokens, self.basis)
                    nll = L.token_nll(logits, b.input_ids[:, 1:])
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
                tv = L.total_variation(logits[rows], ref.logits[rows])
                terms[f"coh_{tag}"] = L.tv_coherence(tv, L.token_entropy(ref.logits[rows]), cmask[rows], lc.tv_alpha,
                                                     scale=lc.coh_weight)
            else:
                terms[f"coh_{tag}"] = L.coherence(nll[rows], ref.nll[rows], cmask[rows], lc.tau)
            lp[c] = L.seq_logp(nll[:n], mask[:n]) - L.seq_logp(nll[n:], mask[n:])
        if lc.separation and lc.sep_kind == "antiparallel":  # one shared term, logged half on each side
            terms["sep_pos"] = terms["sep_neg"] = 0.5 * L.antiparallel(delta[1.0], delta[-1.0], diff_ref)
        if not lc.monotonic:
            terms["mono"] = zero
        elif lc.mono_kind == "entropy":
            h = L.token_entropy(ref.logits[:n])
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

    # ---- checkpoints -------------------------------------------------------------------------
    def _state(self, step: int, result: TrainResult) -> tuple[dict[str, torch.Tensor], dict]:
        params = self.adapter.parameters()
        tensors = {f"param.{i}": p for i, p in enumerate(params)}
        tensors.update({f"best.{i}": t for i, t in enumerate(self.best_params)})
        tensors["rng.torch"] = torch.get_rng_state()  # data order is fixed up front; this covers any other draw
        opt = self.opt.state_dict()
        for i, st in opt["state"].items():
            for k, v in st.items():
                tensors[f"opt.{i}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
        meta = {
            "step": step,
            "param_groups": opt["param_groups"],
            "scheduler": self.sched.state_dict(),
            "history": result.history,
            "best_step": result.best_step,
            "best_val": result.best_val,
            "bad_evals": self.bad_evals,
        }
        return tensors, meta

    def save_checkpoint(self, step: int, result: TrainResult) -> None:
        """Adapter, best adapter, optimizer, scheduler, step and log; atomic (tensors then meta)."""
        if self.ckpt_dir is None:
            return
        tensors, meta = self._state(step, result)
        atomic_save_tensors(tensors, self.ckpt_dir / "checkpoint.safetensors")
        atomic_write_json(self.ckpt_dir / "checkpoint.json", meta)

    def load_checkpoint(self, result: TrainResult) -> int:
        """Restore the state written by save_checkpoint; returns the step to continue from."""
        meta = read_json(self.ckpt_dir / "checkpoint.json")
        tensors = load_tensors(self.ckpt_dir / "checkpoint.safetensors")
        params = self.adapter.parameters()
        with torch.no_grad():
            for i, p in enumerate(params):
                p.copy_(tensors[f"param.{i}"])
        self.best_params = [tensors[f"best.{i}"].to(self.device) for i in range(len(params))]
        torch.set_rng_state(tensors["rng.torch"])
        state = {}
        for key, v in tensors.items():
            if key.startswith("opt."):
                _, i, k = key.split(".", 2)
                state.setdefault(int(i), {})[k] = v.to(self.device) if k != "step" else v
        self.opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        self.sched.load_state_dict(meta["scheduler"])
        result.history = meta["history"]
        result.best_step, result.best_val = meta["best_step"], meta["best_val"]
        self.bad_evals = meta["bad_evals"]
        return int(meta["step"])

    # ---- the loop ----------------------------------------------------------------------------
    def _make_optimizer(self) -> None:
        tc = self.tcfg
        params = self.adapter.parameters()
        self.opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
        if tc.schedule == "onecycle":
            self.sched = torch.optim.lr_scheduler.OneCycleLR(
                self.opt, max_lr=tc.lr, total_steps=self.total_steps, cycle_momentum=False,
                pct_start=0.1 if self.total_steps != 10 else 0.15,  # torch divides by zero when pct_start·steps == 1
            )
        elif tc.schedule == "cosine":
            self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=self.total_steps)
        else:
            self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: 1.0)

    @torch.no_grad()
    def validate(self, u: torch.Tensor) -> tuple[float, float]:
        """(validation loss, mean projection shift +1 vs −1) on the validation pairs."""
        idx = list(range(len(self.val_pairs)))
        b = self._encode(self.val_pairs, idx)
        ref = self._live_reference(b) if self.live_ref else self._ref_for(idx, self.val_cache, self.val_pairs, self._span(b))
        self.ramp = 1.0
        total, logged = self.step_loss(b, ref, u)
        return float(total), logged["shift_pos"] - logged["shift_neg"]

    def prepare(self) -> None:
        """Fix the batch order, cache the reference, compute u, attach the adapter, build the optimizer.

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
        self._make_optimizer()
        self.best_params = [p.detach().clone() for p in self.adapter.parameters()]
        self.bad_evals = 0

    def optimizer_step(self, step: int) -> list[dict[str, float]]:
        """One optimizer step over `grad_accum` micro-batches; returns each micro-batch's logged terms."""
        self.opt.zero_grad(set_to_none=True)
        logs = []
        for k in range(self.tcfg.grad_accum):
            idx = self.batches[step * self.tcfg.grad_accum + k]
            b = self._encode(self.train_pairs, idx)
            ref = self._live_reference(b) if self.live_ref else self._ref_for(idx, self.cache, self.train_pairs, self._span(b))
            self.ramp = L.warmup_factor(step, self.total_steps, self.lcfg.warmup)
            total, logged = self.step_loss(b, ref, self.u)
            (total / self.tcfg.grad_accum).backward()
            logs.append(logged)
        if self.tcfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.adapter.parameters(), self.tcfg.grad_clip)
        self.opt.step()
        self.sched.step()
        return logs

    def run(self, resume: bool = False, stop_after: int | None = None) -> TrainResult:
        """Train for `total_steps` (fixed `steps`, or `epochs` capped by `max_steps`) or until early stopping.

        `stop_after` simulates a crash.
        """
        tc = self.tcfg
        result = TrainResult(precision=self.precision)
        self.prepare()
        start = 0
        if resume and self.ckpt_dir is not None and (self.ckpt_dir / "checkpoint.json").exists():
            start = self.load_checkpoint(result)
        total = self.total_steps
        ready = math.ceil(self.lcfg.warmup * total)  # early stopping waits until the constraints are fully in
        bar = tqdm(range(start, total), desc="train", disable=not self.progress, initial=start, total=total)
        for step in bar:
            if stop_after is not None and step >= stop_after:
                break
            try:
                logs = self.optimizer_step(step)
            except TrainingDiverged as e:
                if self.ckpt_dir is not None and (self.ckpt_dir / "checkpoint.json").exists():
                    self.load_checkpoint(result)
                raise TrainingDiverged(f"{e} at step {step}; adapter rolled back to the last good checkpoint") from None
            row = {k: float(np.mean([l[k] for l in logs])) for k in logs[0]}
            row.update(step=step + 1, lr=self.sched.get_last_lr()[0])
            if (step + 1) % tc.eval_every == 0 or step + 1 == total:
                row["val_loss"], row["val_shift"] = self.validate(self.u)
                if step + 1 >= ready and row["val_loss"] < result.best_val - tc.min_delta:
                    result.best_val, result.best_step = row["val_loss"], step + 1
                    self.best_params = [p.detach().clone() for p in self.adapter.parameters()]
                    self.bad_evals = 0
                elif step + 1 >= ready:  # during the warm-up a validation is neither a best nor a miss
                    self.bad_evals += 1
            result.history.append(row)
            bar.set_postfix({k: f"{row[k]:.3f}" for k in ("loss", "sep_pos", "sep_neg", "coh_pos", "coh_neg", "mono")})
            if (step + 1) % tc.checkpoint_every == 0:
                self.save_checkpoint(step + 1, result)
            if tc.patience is not None and self.bad_evals >= tc.patience:
                break
        if stop_after is not None and stop_after < total:
            return result
        with torch.no_grad():
            for p, best in zip(self.adapter.parameters(), self.best_params):
                p.copy_(best)
        self.orient(result)
        return result

    @torch.no_grad()
    def orient(self, result: TrainResult) -> None:
        """Flip the adapter (negate its parameters: exactly c -> −c) if +c moves validation pairs the wrong way."""
        _, shift = self.validate(self.u)
        if shift < 0:
            self.adapter.flip()
            shift = -shift
            result.sign_flipped = True
        result.val_shift = shift
