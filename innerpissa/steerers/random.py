"""`random`: a control: seeded random unit directions, rescaled per layer to the norm of `mean_diff`.

Same layers, same per-layer norm as `mean_diff` at the same c, so any effect beyond this one is due to
the *direction*, not to perturbing the residual stream by that much. The direction of layer l depends
only on (seed, l), not on the other layers chosen.
"""

from __future__ import annotations

import numpy as np
import torch

from ._addition import AdditionSteerer, LayerParams


class RandomParams(LayerParams):
    seed: int = 0


class RandomSteerer(AdditionSteerer):
    """Residual-stream addition of a random direction with the mean-difference norm (seeded)."""

    name = "random"
    Params = RandomParams
    seed_param = "seed"  # each seed draws other directions
    role = "null"  # the control every method's effect is read against
    rank = 4

    def vector(self, diff: torch.Tensor, layer: int) -> torch.Tensor:
        g = np.random.default_rng([self.hparams["seed"], layer])
        u = torch.from_numpy(g.standard_normal(diff.shape[1])).to(diff.dtype)
        return u / u.norm() * diff.mean(0).norm()


STEERER = RandomSteerer
