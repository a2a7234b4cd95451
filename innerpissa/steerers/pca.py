"""`pca`: repeng-style steering vector, the first principal direction of chosen − rejected differences.

Like repeng's `read_representations(method="pca_diff")`, which fits sklearn `PCA(n_components=1)` to the
differences: sklearn *centers* them, so the direction is the main axis along which the pair differences
vary around their mean, not the mean difference itself (see vgel/repeng issue #28). `center=False` takes
the uncentered top singular vector instead (close to the mean-difference direction when pairs agree).
Sign: oriented so chosen projects higher than rejected on average (u·mean_diff > 0; repeng uses a
majority vote per pair). Scale: the unit direction is multiplied by ‖mean_diff_l‖, so at a given c it adds
a vector of the same norm as `mean_diff` and `random` on every layer and coefficients compare across them
(repeng adds the unit vector, so repeng's coefficient = ours × ‖mean_diff_l‖).
"""

from __future__ import annotations

import torch
from pydantic import Field

from ._addition import AdditionSteerer, LayerParams


def principal_direction(diff: torch.Tensor, center: bool = True) -> torch.Tensor:
    """Unit first principal direction of rows of `diff` [n, d], signed so the mean row projects ≥ 0."""
    mean = diff.mean(0)
    x = diff - mean if center else diff
    u = torch.linalg.svd(x, full_matrices=False).Vh[0]
    return -u if u @ mean < 0 else u


class PCAParams(LayerParams):
    center: bool = Field(True, description="center the differences (repeng, sklearn PCA); False: top singular vector")


class PCASteerer(AdditionSteerer):
    """Residual-stream addition of the PCA direction of the differences, scaled to the mean-difference norm."""

    name = "pca"
    Params = PCAParams
    rank = 2

    def vector(self, diff: torch.Tensor, layer: int) -> torch.Tensor:
        if self.hparams["center"] and len(diff) < 2:
            raise ValueError("pca with center=True needs at least 2 contrastive pairs; give more pairs or center=False")
        return principal_direction(diff, self.hparams["center"]) * diff.mean(0).norm()


STEERER = PCASteerer
