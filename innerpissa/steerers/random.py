"""`random`: a control: seeded random unit directions, rescaled per layer to the norm of `mean_diff`.

Same layers, same per-layer norm as `mean_diff` at the same c, so any effect beyond this one is due to
the *direction*, not to perturbing the residual stream by that much. The direction of layer l depends
only on (seed, l), not on the other layers chosen.
"""

from __future__ import annotations

from collections.abc import Sequence
import numpy as np
import torch

from ._addition import DEFAULT_LAYER_RANGE, AdditionSteerer


class RandomSteerer(AdditionSteerer):
    """Residual-stream addition of a random direction with the mean-difference norm (seeded)."""

    name = "random"

    def __init__(
        self, layers: Sequence[int] | None = None, layer_range: Sequence[float] = DEFAULT_LAYER_RANGE,
        max_length: int = 128, batch_size: int = 32, seed: int = 0,
    ) -> None:
        super().__init__(layers, layer_range, max_length, batch_size)
        self.hparams["seed"] = int(seed)

    def vector(self, diff: torch.Tensor, layer: int) -> torch.Tensor:
        g = np.random.default_rng([self.hparams["seed"], layer])
        u = torch.from_numpy(g.standard_normal(diff.shape[1])).to(diff.dtype)
        return u / u.norm() * diff.mean(0).norm()


STEERER = RandomSteerer
