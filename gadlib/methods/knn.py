"""Training-free nearest-normal residual baseline (few-shot PatchCore style).

Each query patch is scored by its distance to the nearest patch among *all positions of all k normal
references*; the patch map is upsampled bilinearly to the image size, smoothed with a Gaussian
(sigma = 4 px) and the image score is its maximum. Abnormal references are ignored.
"""
from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from gadlib.backbones import DEFAULT_BACKBONE
from gadlib.kernels.patches import to_patches
from gadlib.kernels.residual import check_search, nearest_per_group
from gadlib.kernels.scoring import image_score, upsample_blur
from gadlib.kernels.vod import check_vod
from gadlib.methods.base import Method, References, Scores, register_method
from gadlib.methods.features import BackboneFeatures, check_fusion, check_not_scored, check_shots, collect_scores


LEVEL_MATCHINGS = ("joint", "each")


@register_method("knn")
class KNNResidual(BackboneFeatures, Method):
    """Nearest-normal patch distance.

    Args:
        backbone: timm model name of the frozen feature extractor.
        levels: backbone feature levels (timm ``out_indices``); ``None`` = the backbone's default.
        image_size: square input size in pixels; pixel maps have this size.
        grid: where levels are aligned: ``"coarsest"`` (cheap; default), ``"finest"``, or a side length.
        neighbourhood: local aggregation window (PatchCore uses 3).
        metric: ``"l2"`` or ``"cosine"``.
        level_matching: ``"joint"`` (default): one distance over the levels' concatenated channels;
            ``"each"``: every level matched on its own, the running nearest distances averaged over levels
            (InCTRL's patch residual s_p does this), so a level with more channels does not dominate.
        sigma: Gaussian smoothing of the pixel map, in pixels.
        reduction: image score from the map, ``"max"`` or ``"top1%"``.
        vod_channel: VOD reading (A) on the features before matching (``"none"``, ``"ranks"``,
            ``"gaussian"``; :func:`gadlib.kernels.vod.channel_vod`). Reading (B) cannot change a distance
            to the nearest normal patch (it keeps each residual's norm), so kNN has no ``vod_position``.
        search: how query patches are matched to the normal references at inference: ``"exact"``
            (default), ``"float16"``, ``"faiss"`` or ``"faiss-ivf"`` (:mod:`gadlib.kernels.residual`).
        fusion: ``"none"`` (default) or ``"global"``: the image score fused, label-free, with the image-level
            residual, both calibrated on the k normal references by leave-one-out
            (:meth:`~gadlib.methods.features.BackboneFeatures.fuse_global`; pixel maps unchanged; k = 1 unchanged).
        query_batch: queries scored at once (bounds memory together with the kernel's chunks).
        backbone_weights: local weights file for backbones without packaged weights.
        cache_dir: feature cache folder (default ``$GADLIB_CACHE`` or ``~/.cache/gadlib``).
        device: ``"cpu"``, ``"cuda"`` or ``None`` (CUDA when available).
        progress: show progress bars.
    """

    reads_abnormal_references = False

    def __init__(self, backbone: str = DEFAULT_BACKBONE, levels: Sequence[int] | None = None,
                 image_size: int = 224, grid: str | int = "coarsest", neighbourhood: int = 3,
                 metric: str = "l2", level_matching: str = "joint", sigma: float = 4.0, reduction: str = "max",
                 vod_channel: str = "none",
                 search: str = "exact", query_batch: int = 64, backbone_weights: str | None = None,
                 fusion: str = "none", cache_dir: str | None = None, device: str | None = None, progress: bool = True):
        self.backbone = backbone
        self.levels = levels
        self.image_size = image_size
        self.grid = grid
        self.neighbourhood = neighbourhood
        self.metric = metric
        self.level_matching = level_matching
        self.sigma = sigma
        self.reduction = reduction
        self.vod_channel = vod_channel
        self.search = search
        self.query_batch = query_batch
        self.backbone_weights = backbone_weights
        self.cache_dir = cache_dir
        self.device = device
        self.progress = progress
        self.fusion = fusion

    def predict_shots(self, queries: Sequence[str], references: References, shots: Sequence[int],
                      with_pixel: bool = True) -> dict[int, Scores]:
        """Scores for the first k normal references, for every k in ``shots``, in one matching pass.

        Each query patch is matched once against every reference image separately; a running minimum
        over references gives the nearest-normal distance for every prefix of the references.
        """
        shots = check_shots(references, shots)
        check_not_scored(queries, references)
        check_vod(self.vod_channel, "none", self.name)
        check_search(self.search)
        check_fusion(self.fusion, self.name)
        if self.level_matching not in LEVEL_MATCHINGS:
            raise ValueError(f"knn: level_matching must be one of {LEVEL_MATCHINGS}, got '{self.level_matching}'")
        refs = list(references.normal[:shots[-1]])
        cache = self.feature_cache()
        cache.ensure(refs + list(queries))
        ref_features = self.patch_features(refs)
        cells = ref_features.shape[-2] * ref_features.shape[-1]
        bank = to_patches(ref_features)
        image_scores: dict[int, list] = {k: [] for k in shots}
        pixel_maps: dict[int, list] = {k: [] for k in shots}
        batches = range(0, len(queries), self.query_batch)
        for start in tqdm(batches, desc="knn scoring", unit="batch", disable=not self.progress, leave=False):
            features = self.patch_features(queries[start:start + self.query_batch])
            n, _, h, w = features.shape
            nearest_first_k = self._nearest_first_k(features, bank, cells)
            for k in shots:
                maps = upsample_blur(nearest_first_k[:, k - 1].reshape(n, h, w), self.image_size, self.sigma,
                                     self.cell_offset(w))
                image_scores[k].append(image_score(maps, self.reduction).cpu())
                if with_pixel:
                    pixel_maps[k].append(maps.cpu())
        return self.fuse_global(queries, references, shots, collect_scores(image_scores, pixel_maps, with_pixel))

    def _nearest_first_k(self, features: torch.Tensor, bank: torch.Tensor, cells: int) -> torch.Tensor:
        """``(N * H * W, K)``: each query patch's distance to its nearest patch among the first 1..K references."""
        queries = to_patches(features)
        if self.level_matching == "joint":
            per_ref = nearest_per_group(queries, bank, cells, self.metric, search=self.search)
            return torch.cummin(per_ref, dim=1).values
        splits = self.feature_cache().backbone.channels        # aligned levels keep their channel blocks
        per_level = [torch.cummin(nearest_per_group(q, b, cells, self.metric, search=self.search), dim=1).values
                     for q, b in zip(queries.split(splits, dim=1), bank.split(splits, dim=1))]
        return torch.stack(per_level).mean(0)
