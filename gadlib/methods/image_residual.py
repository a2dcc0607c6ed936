"""Image-level (global) residual as a training-free method of its own.

Each query's per-channel feature statistics (mean and spread over positions, per backbone level) are
compared with those of the nearest of the k normal references, in units of the references' own
patch-to-patch spread (:mod:`gadlib.kernels.global_residual`). It sees what no patch score sees -- a whole
image that is slightly finer, flatter or darker -- and is blind to a small local defect. Its usual role is as
the second channel of the ``fusion="global"`` hyper-parameter every method has; alone, it is the study's
global baseline. Global evidence has no place: the pixel map is the image score everywhere.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from gadlib.backbones import DEFAULT_BACKBONE
from gadlib.methods.base import Method, References, Scores, register_method
from gadlib.methods.features import BackboneFeatures, check_not_scored, check_shots


@register_method("image_residual")
class ImageResidual(BackboneFeatures, Method):
    """Distance of a query's channel statistics to the nearest normal reference's.

    Args:
        backbone, levels, image_size, backbone_weights: the frozen feature extractor (as ``knn``); every
            level is compared on its own and the levels' distances are averaged.
        cache_dir, device, progress: as ``knn``.
    """

    reads_abnormal_references = False

    def __init__(self, backbone: str = DEFAULT_BACKBONE, levels: Sequence[int] | None = None,
                 image_size: int = 224, backbone_weights: str | None = None, cache_dir: str | None = None,
                 device: str | None = None, progress: bool = True):
        self.backbone = backbone
        self.levels = levels
        self.image_size = image_size
        self.backbone_weights = backbone_weights
        self.cache_dir = cache_dir
        self.device = device
        self.progress = progress

    def predict_shots(self, queries: Sequence[str], references: References, shots: Sequence[int],
                      with_pixel: bool = True) -> dict[int, Scores]:
        """Scores for the first k normal references, for every k in ``shots``."""
        shots = check_shots(references, shots)
        check_not_scored(queries, references)
        normal = list(references.normal[:shots[-1]])
        self.feature_cache().ensure(normal + list(queries))
        out = {}
        for k in shots:
            image = self.global_scores(queries, normal[:k]).numpy()
            pixel = (np.broadcast_to(image[:, None, None], (len(image), self.image_size, self.image_size))
                     .astype(np.float32) if with_pixel else None)
            out[k] = Scores(image=image, pixel=pixel)
        return out
