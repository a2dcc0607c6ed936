"""The training-free baselines every trained method is read against: named configurations.

* ``kNN (L2, max)`` -- the first round's baseline (``knn`` with its defaults): L2 distance to the nearest
  normal patch, image score = the map's maximum;
* ``kNN (cosine, top-1 %)`` -- AnomalyDINO-style (Damm et al. 2025): cosine distance to the nearest normal
  patch, image score = mean of the map's top 1 %; grid, neighbourhood and input size chosen on the six
  synthetic source categories (``notebooks/12_baselines.ipynb``);
* ``image residual`` -- the image-level residual alone (``image_residual``): blind to local defects;
* ``kNN (cosine, top-1 %) + image residual`` -- the cosine kNN fused label-free with the image residual
  (``fusion="global"``, :mod:`gadlib.kernels.fusion`).

:data:`BEST_TRAINING_FREE` names the one the study's tables put beside every trained method; it is the best
of these on the source categories with local and simulated global anomalies, never chosen on a target.
"""
from __future__ import annotations

from gadlib.methods import Method, create_method

COSINE_KNN = dict(metric="cosine", reduction="top1%", neighbourhood=1, grid="coarsest", image_size=224)
BASELINES: dict[str, tuple[str, dict]] = {
    "kNN (L2, max)": ("knn", {}),
    "kNN (cosine, top-1 %)": ("knn", COSINE_KNN),
    "image residual": ("image_residual", {}),
    "kNN (cosine, top-1 %) + image residual": ("knn", dict(COSINE_KNN, fusion="global")),
}
BEST_TRAINING_FREE = "kNN (cosine, top-1 %) + image residual"


def create_baseline(name: str, **overrides) -> Method:
    """The named baseline's method (``overrides`` change hyper-parameters, e.g. ``progress=False``)."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline '{name}'; named baselines: {list(BASELINES)}")
    method, params = BASELINES[name]
    return create_method(method, **{**params, **overrides})
