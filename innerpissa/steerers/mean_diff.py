"""`mean_diff`: CAA-style steering vector, the mean last-token difference h_chosen − h_rejected per layer.

Rimsky et al. 2024 (Contrastive Activation Addition): v_l = mean_i (h_l(chosen_i) − h_l(rejected_i)),
added to the residual stream × c at every position. c = 1 adds exactly the average pair difference,
which makes it the unit the `pca` and `random` baselines are scaled to.
"""

from __future__ import annotations

import torch

from ._addition import AdditionSteerer


class MeanDiffSteerer(AdditionSteerer):
    """Residual-stream addition of the per-layer mean chosen−rejected last-token difference."""

    name = "mean_diff"
    rank = 3

    def vector(self, diff: torch.Tensor, layer: int) -> torch.Tensor:
        return diff.mean(0)


STEERER = MeanDiffSteerer
