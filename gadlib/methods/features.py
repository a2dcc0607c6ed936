"""What every backbone-based method shares: its feature cache, patch features, and reference checks."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from gadlib.cache import FeatureCache, shared_cache
from gadlib.kernels.fusion import fuse
from gadlib.kernels.global_residual import image_residual
from gadlib.kernels.patches import align_levels, local_aggregate
from gadlib.kernels.vod import channel_vod_grid, position_vod_any

# Label-free fusion of a method's own (local) image score with the image-level residual
# (:mod:`gadlib.kernels.fusion`): name -> the rule's constants. "global" was chosen on synthetic source
# categories with simulated global anomalies, never on a target (``notebooks/12_baselines.ipynb``): of the rules
# that cost the local defects at most a point at every k, the one that finds the most global anomalies.
FUSIONS = {"none": None, "global": dict(shrink=0.5, others="excess", weight=1.0, combine="sum")}
GLOBAL_BATCH = 64          # queries whose statistics are computed at once


class BackboneFeatures:
    """Mixin for methods with ``backbone, levels, image_size, backbone_weights, cache_dir, device,
    progress`` (and, for :meth:`patch_features`, ``neighbourhood`` and ``grid``) hyper-parameters."""

    def feature_cache(self) -> FeatureCache:
        """The (process-wide shared) feature cache of this method's backbone configuration."""
        return shared_cache(self.backbone, self.levels, self.image_size, self.backbone_weights,
                            self.cache_dir, self.device, self.progress)

    def aligned(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        """Backbone levels ``[(B, C_l, H_l, W_l)]`` -> aggregated, level-aligned ``(B, D, H, W)``.

        With a ``vod_channel`` hyper-parameter, VOD reading (A) is applied to the aligned grid.
        """
        grid = align_levels([local_aggregate(level, self.neighbourhood) for level in levels], self.grid)
        return channel_vod_grid(grid, getattr(self, "vod_channel", "none"))

    def cell_offset(self, side: int) -> float:
        """Where cell 0 of a ``side``-cell grid of aligned levels is centred, in pixels
        (:func:`gadlib.kernels.scoring.upsample`, :meth:`gadlib.backbones.Backbone.grid_offset`): pixel maps
        put each cell's score on its receptive field's centre, not half a stride down and right of it."""
        return self.feature_cache().backbone.grid_offset(side)

    def vod_residual(self, residuals: torch.Tensor, channel_dim: int = -1) -> torch.Tensor:
        """VOD reading (B) on residuals (``vod_position`` hyper-parameter; none = unchanged)."""
        return position_vod_any(residuals, getattr(self, "vod_position", "none"), channel_dim)

    def predict(self, queries: Sequence[str], references, with_pixel: bool = True):
        """Scores with all k normal references: :meth:`predict_shots` for that one k."""
        k = len(references.normal)
        return self.predict_shots(queries, references, [k], with_pixel)[k]

    def _bar(self, batches):
        """A progress bar over query batches (hidden when ``progress`` is off)."""
        from tqdm.auto import tqdm

        return tqdm(batches, desc=f"{self.name} scoring", unit="batch", disable=not self.progress, leave=False)

    def patch_features(self, paths: Sequence[str]) -> torch.Tensor:
        """``(B, D, H, W)`` aggregated, level-aligned patch features of ``paths``."""
        cache = self.feature_cache()
        return self.aligned(cache.get(paths)).to(cache.device)

    # -- fusion with the image-level residual ----------------------------------------------------------
    def global_scores(self, queries: Sequence[str], references: Sequence[str]) -> torch.Tensor:
        """``(N,)`` image-level residual of each query against ``references`` (the backbone's raw levels,
        :func:`gadlib.kernels.global_residual.image_residual`), computed in batches of queries."""
        cache = self.feature_cache()
        refs = cache.get(list(references))
        return torch.cat([image_residual(cache.get(list(queries[start:start + GLOBAL_BATCH])), refs)
                          for start in range(0, len(queries), GLOBAL_BATCH)])

    def fusion_channels(self, queries: Sequence[str], references, scores: dict) -> dict:
        """For every k >= 2 of ``scores`` (``{k: Scores}``, this method's own): the two channels that
        :meth:`fuse_global` fuses, ``{k: [(own (N,), own_normal (k,)), (global (N,), global_normal (k,))]}``.

        ``*_normal`` are leave-one-out scores: each of the first k normal references scored against the
        other k - 1, by this method with ``fusion="none"`` (abnormal references kept) and by the image residual.
        """
        from gadlib.methods.base import References

        plain = self.with_params(fusion="none", progress=False)
        normal = list(references.normal)
        channels = {}
        for k in sorted(scores):
            if k < 2:
                continue
            own_normal, global_normal = [], []
            for held_out in range(k):
                others = normal[:held_out] + normal[held_out + 1:k]
                guide = References(others, list(references.abnormal), list(references.abnormal_masks))
                own_normal.append(float(plain.predict([normal[held_out]], guide, with_pixel=False).image[0]))
                global_normal.append(float(self.global_scores([normal[held_out]], others)[0]))
            channels[k] = [(torch.from_numpy(np.asarray(scores[k].image)), torch.tensor(own_normal)),
                           (self.global_scores(queries, normal[:k]), torch.tensor(global_normal))]
        return channels

    def fuse_global(self, queries: Sequence[str], references, shots: Sequence[int], scores: dict) -> dict:
        """``scores`` (``{k: Scores}``) with image scores fused with the image-level residual when the
        ``fusion`` hyper-parameter asks for it (:data:`FUSIONS`, :func:`gadlib.kernels.fusion.fuse`); pixel
        maps stay the method's own. Both channels are calibrated on the k normal references alone
        (:meth:`fusion_channels`); at k = 1 there is nothing to calibrate with and the method's own scores
        are returned.
        """
        from gadlib.methods.base import Scores

        rule = check_fusion(getattr(self, "fusion", "none"), self.name)
        if rule is None:
            return scores
        channels = self.fusion_channels(queries, references, scores)
        return {k: Scores(image=fuse(channels[k], **rule).numpy(), pixel=scores[k].pixel) if k in channels
                else scores[k] for k in scores}


def mask_coverage(masks: Sequence[str | None], paths: Sequence[str], image_size: int,
                  side: tuple[int, int], offset: float | None = None) -> torch.Tensor:
    """``(m, H*W)``: the share of each feature cell's window that each image's mask covers (no mask: 0);
    ``offset`` centres the windows on the cells' receptive fields (:func:`gadlib.kernels.coverage.cell_coverage`,
    :meth:`BackboneFeatures.cell_offset`)."""
    from gadlib.data.images import load_masks
    from gadlib.kernels.coverage import cell_coverage

    pixels = torch.from_numpy(load_masks(list(masks), list(paths), image_size)).float()
    return cell_coverage(pixels, tuple(side), offset).flatten(1)


def abnormal_cells(coverage: torch.Tensor, threshold: float) -> torch.Tensor:
    """``(m, N)`` mask coverage of m abnormal references -> the cells that hold their anomaly.

    Cells covered at least ``threshold``; a defect smaller than that everywhere keeps its most covered
    cells; a reference without any mask (image label only) counts everywhere.
    """
    most = coverage.amax(dim=1, keepdim=True)
    inside = coverage >= torch.clamp(most, max=threshold)
    return torch.where(most > 0, inside & (coverage > 0), torch.ones_like(inside))


def check_fusion(fusion: str, name: str = "method") -> dict | None:
    """The constants of a :data:`FUSIONS` rule (``None`` for ``"none"``); ``ValueError`` for an unknown name."""
    if fusion not in FUSIONS:
        raise ValueError(f"{name}: fusion must be one of {sorted(FUSIONS)}, got '{fusion}'")
    return FUSIONS[fusion]


def check_shots(references, shots: Sequence[int]) -> list[int]:
    """Sorted distinct ``shots``; ``ValueError`` unless ``1 <= k <= len(references.normal)``."""
    shots = sorted(set(int(k) for k in shots))
    if not references.normal or not shots or shots[0] < 1 or shots[-1] > len(references.normal):
        raise ValueError(f"shots {shots} need 1 <= k <= {len(references.normal)} normal references")
    return shots


def check_not_scored(queries: Sequence[str], references) -> None:
    """A reference image must never be scored as a query (it would leak its own label)."""
    scored = set(queries) & (set(references.normal) | set(references.abnormal))
    if scored:
        raise ValueError(f"{len(scored)} reference image(s) are also queries, e.g. {sorted(scored)[0]}; "
                         "references must be excluded from the queries they guide (see sample_episode)")


def check_backbone(method, fit: dict) -> None:
    """``ValueError`` when a checkpoint's features (``fit["backbone_key"]``) are not this method's."""
    expected = (fit or {}).get("backbone_key")
    actual = method.feature_cache().backbone.key()
    if expected is not None and expected != actual:
        raise ValueError(f"checkpoint was trained on backbone features '{expected}', but this model "
                         f"extracts '{actual}'; load it with the backbone, levels, image size and "
                         "weights it was trained with (or retrain with `gad train`)")


def collect_scores(image_scores: dict[int, list], pixel_maps: dict[int, list], with_pixel: bool) -> dict:
    """Per-k lists of batch tensors -> ``{k: Scores}`` (image ``(N,)``, pixel ``(N, H, W)`` or ``None``)."""
    from gadlib.methods.base import Scores

    return {k: Scores(image=torch.cat(image_scores[k]).numpy(),
                      pixel=torch.cat(pixel_maps[k]).numpy() if with_pixel else None) for k in image_scores}
