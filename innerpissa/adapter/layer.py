"""The InnerPiSSA layer: steer a linear map inside its own singular basis, by one real coefficient c.

For W [out, in] = U diag(S) Vᵀ, keep r directions (U_r, S_r, V_r; frozen buffers). With a learnable
skew generator A per side, R(c) = Cayley(cA) is a rotation with R(0) = I and R(-c) = R(c)ᵀ, and the
singular values become S'(c) (S'(0) = S). The steered map is

    y = ((x V_r R_v(c)) ⊙ S'(c)) (U_r R_u(c))ᵀ + x W_resᵀ + b,    W_res = W − U_r diag(S_r) V_rᵀ.

We compute it as y = base(x) + (x V_r) Mᵀ U_rᵀ with the r×r M = R_u diag(S') R_vᵀ − diag(S_r): algebraically
the same, but W_res is never stored (no extra [out, in] buffer), the delta is never a difference of two large
bf16 terms, and c = 0 skips the delta, so it is bit-exact.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import AdapterConfig


def skew(P: torch.Tensor, max_angle: float) -> torch.Tensor:
    """Skew-symmetric generator A = θ·tanh((P − Pᵀ)/θ): soft-clamps every entry to (−θ, θ)."""
    A = P - P.T
    return max_angle * torch.tanh(A / max_angle)


def rotation(A: torch.Tensor, c: float, kind: str = "cayley") -> torch.Tensor:
    """R(c) for skew A: Cayley (I − cA/2)⁻¹(I + cA/2), or matrix_exp(cA). Orthogonal; R(0) = I."""
    if kind == "matrix_exp":
        return torch.linalg.matrix_exp(c * A)
    eye = torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
    return torch.linalg.solve(eye - 0.5 * c * A, eye + 0.5 * c * A)


def contrast_dims(S: torch.Tensor, V: torch.Tensor, x_cho: torch.Tensor, x_rej: torch.Tensor, r: int) -> torch.Tensor:
    """Data-aware choice: the r directions whose output moves most between chosen and rejected inputs.

    Score_i = S_i · rms_n((x_cho − x_rej)_n · v_i): the RMS size, along u_i, of the output difference.
    """
    diff = (x_cho - x_rej).reshape(-1, V.shape[0]).float() @ V  # [N, k]
    score = S * diff.pow(2).mean(0).sqrt()
    return torch.argsort(score, descending=True)[: min(r, S.numel())].sort().values


class InnerPiSSALinear(nn.Module):
    """Wraps an nn.Linear; `coeff` (a float, set by `steer`) picks the point on the steering path."""

    def __init__(
        self,
        base: nn.Linear,
        cfg: AdapterConfig,
        dims: torch.Tensor | None = None,
        frozen: dict[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.base_layer = base
        self.cfg = cfg
        self.coeff = 0.0
        if frozen is None:  # fresh: full SVD in fp32 of the frozen weight
            U, S, Vh = torch.linalg.svd(base.weight.detach().float(), full_matrices=False)
            idx = torch.arange(min(cfg.r, S.numel())) if dims is None else dims  # SVD sorts S: top-r first
            frozen = {"U": U[:, idx].contiguous(), "S": S[idx].contiguous(), "V": Vh[idx].T.contiguous()}
        self.register_buffer("U", frozen["U"])  # [out, r]
        self.register_buffer("S", frozen["S"])  # [r]
        self.register_buffer("V", frozen["V"])  # [in, r]
        r = self.S.numel()
        dev = self.S.device

        def small(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape, device=dev) * cfg.init_std)

        self.P_v = small(r, r) if cfg.rotate_v else None
        self.P_u = small(r, r) if cfg.rotate_u else None
        self.lam = small(r) if cfg.scale != "none" else None  # log-scale (mult) or shift (add, tanh)
        self._core_cache: tuple | None = None  # (key, core) for gradient-free forwards, see `core`

    def rotations(self, c: float) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(R_v(c), R_u(c)); None where that side is not rotated."""
        kind, th = self.cfg.rotation, self.cfg.max_angle
        Rv = rotation(skew(self.P_v, th), c, kind) if self.P_v is not None else None
        Ru = rotation(skew(self.P_u, th), c, kind) if self.P_u is not None else None
        return Rv, Ru

    def singular_values(self, c: float) -> torch.Tensor:
        """S'(c) for the configured mode: mult S·exp(cλ), add S + cδ, tanh S + c·tanh(δ)·S, none S."""
        mode, S = self.cfg.scale, self.S
        if mode == "mult":
            return S * torch.exp(c * self.lam)
        if mode == "add":
            return S + c * self.lam
        if mode == "tanh":
            return S + c * torch.tanh(self.lam) * S
        return S

    def core_delta(self, c: float) -> torch.Tensor:
        """R_u diag(S'(c)) R_vᵀ − diag(S), [r, r]: the change in the singular basis, so ΔW(c) = U·core_delta·Vᵀ."""
        Rv, Ru = self.rotations(c)
        core = torch.diag(self.singular_values(c))
        if Ru is not None:
            core = Ru @ core
        if Rv is not None:
            core = core @ Rv.T
        return core - torch.diag(self.S)

    def delta_weight(self, c: float) -> torch.Tensor:
        """ΔW(c) = U R_u diag(S') R_vᵀ Vᵀ − U diag(S) Vᵀ, [out, in] (for merging)."""
        return self.U @ self.core_delta(c) @ self.V.T

    def core(self, c: float) -> torch.Tensor:
        """core_delta(c) in fp32 (autocast off: the Cayley solve and S' stay exact under bf16).

        Without gradients it is cached per (c, parameter versions), so steered generation and evaluation
        solve each r×r system once per coefficient, not once per forward (every in-place update of a
        parameter, e.g. an optimizer step, flip or load, bumps its version and invalidates the cache)."""
        params = [p for p in (self.P_v, self.P_u, self.lam) if p is not None]
        with torch.autocast(self.S.device.type, enabled=False):
            if torch.is_grad_enabled() and any(p.requires_grad for p in params):
                return self.core_delta(c)
            key = (c, tuple((p.data_ptr(), p._version) for p in params))
            if self._core_cache is None or self._core_cache[0] != key:
                self._core_cache = (key, self.core_delta(c).detach())
            return self._core_cache[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        c = float(self.coeff)
        if c == 0.0:
            return y
        z = x.to(self.V.dtype) @ self.V  # [..., r] coordinates in the input singular basis
        return y + ((z @ self.core(c).T) @ self.U.T).to(y.dtype)  # the delta alone: no cancellation in bf16

    def extra_repr(self) -> str:
        c = self.cfg
        return f"r={self.S.numel()}, rotate_v={c.rotate_v}, rotate_u={c.rotate_u}, scale={c.scale}, coeff={self.coeff}"
