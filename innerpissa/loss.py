"""ReprPO loss terms as pure functions of tensors (no model inside), each testable by hand.

Notation: `proj` is the chosen−rejected hidden-state difference at the loss layer, projected on the
preference direction u (in the singular basis), averaged over the last N tokens -> one number per pair.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def symlog(x: torch.Tensor) -> torch.Tensor:
    """sign(x)·log(1 + |x|): linear near 0, logarithmic far out, so neither direction dominates."""
    return torch.sign(x) * torch.log1p(x.abs())


def preference_direction(diff: torch.Tensor, topk: int | None = None) -> torch.Tensor:
    """Unit mean of chosen−rejected differences `diff` [..., k]; optionally keep only its top-|k| dims."""
    u = diff.reshape(-1, diff.shape[-1]).mean(0)
    if topk is not None and topk < u.numel():
        keep = u.abs().topk(topk).indices
        u = torch.zeros_like(u).index_copy_(0, keep, u[keep])
    return u / u.norm().clamp_min(1e-12)


def projection(h_cho: torch.Tensor, h_rej: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """(h_cho − h_rej)·u averaged over tokens: [B, N, k] x2 -> [B]."""
    return ((h_cho - h_rej) @ u).mean(-1)


def relative_shift(proj_pi: torch.Tensor, proj_ref: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Mean projection change vs reference, in units of the reference's mean |projection| (scale-free)."""
    return (proj_pi - proj_ref).mean() / (proj_ref.abs().mean() + eps)


def separation(proj_pi: torch.Tensor, proj_ref: torch.Tensor, sign: float) -> torch.Tensor:
    """−symlog(sign · relative shift): c = +1 rewards moving the projection up, c = −1 down.

    Dividing by the reference's mean |projection| makes the term comparable across layers and
    models; symlog gives diminishing returns so neither direction dominates the other.
    """
    return -symlog(sign * relative_shift(proj_pi, proj_ref))


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token NLL [B, T] of `targets` under `logits` [B, T, V] (already aligned: logits[t] predicts targets[t])."""
    return F.cross_entropy(logits.transpose(1, 2).float(), targets, reduction="none")


def coherence(nll_pi: torch.Tensor, nll_ref: torch.Tensor, mask: torch.Tensor, tau: float) -> torch.Tensor:
    """Barrier on the per-token NLL increase: mean_t log1p(relu(Δnll_t − τ)) over masked tokens."""
    barrier = torch.log1p(F.relu(nll_pi - nll_ref - tau))
    return (barrier * mask).sum() / mask.sum().clamp_min(1)


def seq_logp(nll: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean token log-prob per sequence (−mean masked NLL): [B, T] -> [B]."""
    return -(nll * mask).sum(-1) / mask.sum(-1).clamp_min(1)


def monotonic(d_neg: torch.Tensor, d_zero: torch.Tensor, d_pos: torch.Tensor, margin: float) -> torch.Tensor:
    """Hinge so the answer log-prob gap orders d(−1) < d(0) < d(+1), or all reversed (whichever is closer).

    d(c) = mean over pairs of logp_c(chosen sequence) − logp_c(rejected sequence).
    """
    up = F.relu(d_zero - d_pos + margin) + F.relu(d_neg - d_zero + margin)
    down = F.relu(d_pos - d_zero + margin) + F.relu(d_zero - d_neg + margin)
    return torch.minimum(up, down)


def adaptive_weights(sep_pos: torch.Tensor, sep_neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Coherence weights (w₊, w₋) summing to 2: the direction that separates less gets the looser barrier.

    Inputs are separation losses (lower = further along), detached: w = 2·softmax(−loss).
    """
    w = 2 * torch.softmax(-torch.stack([sep_pos, sep_neg]).detach(), 0)
    return w[0], w[1]


def dpo(logp_w: torch.Tensor, logp_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor,
        beta: float, sign: float | torch.Tensor = 1.0) -> torch.Tensor:
    """DPO loss (Rafailov et al. 2023), mean over pairs: −log σ(sign·β·[(logπ(y_w) − logπ₀(y_w)) − (logπ(y_l) − logπ₀(y_l))]).

    Inputs are summed sequence log-probs [B] of the preferred (w) and dispreferred (l) completions under the
    trained policy π and the frozen reference π₀. sign = −1 swaps the preference: BiPO's bidirectional loss
    (Cao et al. 2024) draws sign d ∈ {±1} and evaluates π at steering coefficient d.
    """
    margin = (logp_w - ref_w) - (logp_l - ref_l)
    return -F.logsigmoid(sign * beta * margin).mean()


# ---- terms of the published recipes (docs/recipes.md) --------------------------------------------


def separation_pairwise(proj_pi: torch.Tensor, proj_ref: torch.Tensor, sign: float, floor: float = 0.1) -> torch.Tensor:
    """Per-pair seed objective: −mean_b symlog((sign·p_π − p_ref) / |p_ref|); at c = −1 it asks for a full reversal.

    Each pair is measured against its own reference projection (denominator floored at `floor` × the
    batch's mean |p_ref| so a near-zero reference cannot blow up); the c = −1 target is −p_ref, not "less".
    """
    scale = proj_ref.abs().clamp_min(floor * proj_ref.abs().mean().clamp_min(1e-6))
    return -symlog((sign * proj_pi - proj_ref) / scale).mean()


def fisher_scaled(x: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Batch mean of x [B, k] divided per dimension by `std` [k] (a t-statistic-like vector)."""
    return x.mean(0) / std


def floored_std(x: torch.Tensor, frac: float = 0.1, abs_floor: float = 0.05) -> torch.Tensor:
    """Per-dimension std over the batch of x [B, k], floored at max(frac·median std, abs_floor)."""
    std = (x.var(0, unbiased=False) + 1e-6).sqrt()
    return std.clamp_min(max(float(frac * std.median()), abs_floor))


def antiparallel(delta_pos: torch.Tensor, delta_neg: torch.Tensor, diff_ref: torch.Tensor, scale: float = 30.0) -> torch.Tensor:
    """AntiPaSTO's projection term: the c = +1 and c = −1 changes should point opposite ways along the reference.

    delta_± [B, k] = (chosen − rejected at c = ±1) − (chosen − rejected at c = 0), per pair; diff_ref [B, k]
    the reference difference. All three are batch-averaged and divided by the reference's per-dimension
    std (floored), then p = cos(δ₊, ref)·cos(δ₋, ref) ∈ [−1, 1] and the loss is symlog(s + relu(s)²) with
    s = scale·p: linear pull toward p = −1, quadratic push away from p > 0. Magnitude-free by design
    (the monotonic margin sets the size of the effect).
    """
    std = floored_std(diff_ref.detach())
    v_ref, v_pos, v_neg = (fisher_scaled(t, std) for t in (diff_ref, delta_pos, delta_neg))
    p = F.cosine_similarity(v_pos, v_ref, dim=0) * F.cosine_similarity(v_neg, v_ref, dim=0)
    s = scale * p
    return symlog(s + F.relu(s).pow(2))


def token_entropy(logp: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of next-token distributions given as log-probabilities: [..., V] -> [...]."""
    return -(logp.exp() * logp).sum(-1)


def total_variation(logp_pi: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """TV distance ½Σ|p_π − p_ref| ∈ [0, 1] per position, from log-probabilities: [..., V] x2 -> [...] (mass moved)."""
    return 0.5 * (logp_pi.exp() - logp_ref.exp()).abs().sum(-1)


def tv_coherence(
    tv: torch.Tensor, h_ref: torch.Tensor, mask: torch.Tensor, alpha: float, floor: float = 0.02, scale: float = 10.0
) -> torch.Tensor:
    """TV barrier: per token v = relu(TV − α·√(H_ref + floor)), penalty log1p(scale·v)² + v, masked mean.

    The threshold grows with the reference entropy: tight where the model is sure, loose where it is not.
    """
    v = F.relu(tv - alpha * (h_ref.detach() + floor).sqrt())
    pen = torch.log1p(scale * v).pow(2) + v
    return (pen * mask).sum() / mask.sum().clamp_min(1)


def monotonic_entropy(
    dlp_neg: torch.Tensor, dlp_pos: torch.Tensor, h_ref: torch.Tensor, frac: float, floor: float = 0.04
) -> torch.Tensor:
    """Hinge on per-pair gap changes: Δ(−1) < −θ < 0 < θ < Δ(+1), or all reversed (the cheaper order for the batch).

    Δ(c) [B] = (logp chosen − logp rejected at c) − (the same at c = 0); θ_b = frac·√H_ref,b + floor, so
    the required effect is in units of the pair's own uncertainty.
    """
    th = frac * h_ref.detach().clamp_min(0).sqrt() + floor
    fwd = (F.relu(dlp_neg + th) + F.relu(th - dlp_pos)).mean()
    bwd = (F.relu(th - dlp_neg) + F.relu(dlp_pos + th)).mean()
    return torch.minimum(fwd, bwd)


def warmup_factor(step: int, total: int, frac: float) -> float:
    """Constraint ramp: linear from 0 to 1 over the first `frac` of `total` steps (1 throughout if frac = 0)."""
    if frac <= 0 or total <= 0:
        return 1.0
    return min(1.0, step / (frac * total))
