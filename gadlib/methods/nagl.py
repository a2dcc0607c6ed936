"""NAGL (NeurIPS 2025): normal-and-abnormal guided generalist anomaly detection.

Per episode (k normal references, m abnormal references with masks, queries), on one feature grid:

1. normal map ``s_n`` -- ``(1 + cos) / 2`` of each query patch to its nearest normal-reference patch;
2. residuals -- every patch minus its nearest normal-reference patch, for the queries (``R_q``) and
   the abnormal references (``R_a``);
3. Residual Mining -- learnable proxies cross-attend the abnormal references (keys = features +
   2-D sine position code, values = ``R_a``, only patches inside each reference's mask), then
   self-attend (:class:`~gadlib.modules.attention.ProxyAttention`);
4. Anomaly Feature Learning -- the mined proxies cross-attend the query (keys = ``R_q`` + position,
   values = query features), then self-attend: the anomaly proxies;
5. abnormal map ``s_a`` -- mean over anomaly proxies of ``(1 + cos(query patch, proxy)) / 2``;
   map = ``(s_a + 1 - s_n) / 2``, upsampled, sigma = 4; image score = mean of the top 1 %.

Trained on source episodes (one category, one defect type) with focal + Dice on the patch map and
cross-entropy on the image score; the epoch count is fixed in advance and the last epoch kept.

Faithful switches (off by default): ``faithful_mask_order`` (attention masks in the public code's
wrong batch/head order) and ``faithful_positions`` (m > 1 references get a position code of a grid
stacked m times, so only the first is aligned with the query). The public code's checkpoint choice
on target test data is not offered; its type-matched protocol is an evaluation option
(``gadlib.study.evaluate_type_matched``). Abnormal references without a mask (ELPV, textile) are
attended everywhere.
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gadlib.backbones import DEFAULT_BACKBONE
from gadlib.kernels.patches import to_patches
from gadlib.kernels.position import sinusoidal_position_2d
from gadlib.kernels.residual import check_search, nearest_in_first, nearest_neighbour, nearest_per_group
from gadlib.kernels.scoring import image_score, topk_mean, upsample_blur
from gadlib.kernels.similarity import normal_abnormal_map, proxy_similarity
from gadlib.kernels.vod import check_vod
from gadlib.methods.base import Method, References, Scores, register_method
from gadlib.methods.features import (BackboneFeatures, abnormal_cells, check_backbone, check_fusion,
                                    check_not_scored, check_shots, collect_scores, mask_coverage)
from gadlib.modules.attention import ProxyAttention, stack_references
from gadlib.modules.losses import dice_loss, focal_loss

MODES = ("full", "normal_only", "abnormal_knn", "untrained")
CENTERS = ("source", "none")


class NAGLNetwork(nn.Module):
    """The learned part: proxies, Residual Mining and Anomaly Feature Learning (separate weights)."""

    def __init__(self, dim: int, proxies: int = 25, heads: int = 4, faithful_mask_order: bool = False):
        super().__init__()
        self.proxies = nn.Parameter(torch.randn(proxies, dim) * 0.02)
        self.mining = ProxyAttention(dim, heads, faithful_mask_order)
        self.feature_learning = ProxyAttention(dim, heads, faithful_mask_order)

    def mine(self, keys: torch.Tensor, values: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """``(B, M*N, D)`` abnormal-reference tokens -> mined proxies ``(B, P, D)``."""
        start = self.proxies[None].expand(keys.shape[0], -1, -1)
        return self.mining(start, keys, values, allowed)

    def abnormal_similarity(self, mined: torch.Tensor, residual_keys: torch.Tensor,
                            features: torch.Tensor) -> torch.Tensor:
        """Anomaly proxies from the query, then ``s_a (B, N)`` of every query patch."""
        anomaly_proxies = self.feature_learning(mined, residual_keys, features)
        return proxy_similarity(features, anomaly_proxies)


@register_method("nagl")
class NAGL(BackboneFeatures, Method):
    """Normal map + learned abnormal map from abnormal-reference residuals.

    Args:
        backbone, levels, image_size, backbone_weights, grid, neighbourhood: the frozen features, as
            ``knn`` (NAGL: DINOv2 ViT-S/14 at 448 px, last layer, no aggregation).
        center: ``"none"`` (the paper) or ``"source"``: subtract the mean normal source patch feature
            (fitted) before every cosine, for backbones whose features are far from centred (cosines
            then crowd near 1). On held-out *source* categories the two differed by under 1 point of
            image AUROC, so the default stays the paper's.
        proxies, heads: Residual Mining / Anomaly Feature Learning size (paper: 25 proxies, 4 heads).
        mode: ``"full"`` (NAGL) or an ablation: ``"normal_only"`` (``s_n`` alone, no learning),
            ``"abnormal_knn"`` (``s_a`` = similarity to the nearest abnormal-reference residual
            inside its mask, no learning), ``"untrained"`` (both maps without learning: ``s_n`` and
            the abnormal kNN map combined as NAGL combines them).
        sigma, reduction: pixel-map smoothing and image score (paper: sigma 4, top 1 %).
        epochs, steps_per_epoch, batch_size: training length fixed in advance (last epoch kept) and
            episodes per step.
        train_shots, train_abnormal_shots: per episode k is drawn from 1..train_shots and m from
            0..train_abnormal_shots (m = 0 included: NAGL is also scored without abnormal references).
        train_maskless: share of training episodes whose abnormal references lose their masks (attended
            everywhere), as image-labelled references such as ELPV's and textile's are at inference.
        lr, weight_decay: AdamW; x0.1 at 50 % and 75 % of training (the paper's epochs 10, 15 of 20).
        anomaly_fraction: probability that an episode's query is anomalous.
        abnormal_threshold: a feature cell is abnormal when its mask covers at least this fraction.
        focal_gamma: focal-loss focusing parameter.
        simulated_per_category: anomalies simulated on each source category's normal images.
        faithful_mask_order, faithful_positions: the public code's bugs, as named switches.
        vod_channel, vod_position: VOD reading (A) on the patch features (before the normal map and the
            residuals) and reading (B) on the query and abnormal-reference residuals (see ``vod``).
        search: how query patches are matched to the normal references at inference: ``"exact"``
            (default), ``"float16"``, ``"faiss"`` or ``"faiss-ivf"`` (:mod:`gadlib.kernels.residual`).
            Training always searches exactly.
        fusion: ``"none"`` (default) or ``"global"``: the image score fused, label-free, with the image-level
            residual, both calibrated on the k normal references by leave-one-out
            (:meth:`~gadlib.methods.features.BackboneFeatures.fuse_global`; pixel maps unchanged; k = 1 unchanged).
        seed, query_batch, cache_dir, device, progress: as ``resad``.
    """

    scoring_params = ("fusion", "mode", "sigma", "reduction", "search", "query_batch", "cache_dir")
    training_seconds = 75.0

    def __init__(self, backbone: str = DEFAULT_BACKBONE, levels: Sequence[int] | None = None,
                 image_size: int = 224, backbone_weights: str | None = None, grid: str | int = "coarsest",
                 neighbourhood: int = 3, center: str = "none", proxies: int = 25, heads: int = 4,
                 mode: str = "full",
                 sigma: float = 4.0, reduction: str = "top1%", epochs: int = 10, steps_per_epoch: int = 60,
                 batch_size: int = 8, train_shots: int = 4, train_abnormal_shots: int = 2,
                 train_maskless: float = 0.5, lr: float = 1e-4,
                 weight_decay: float = 1e-4, anomaly_fraction: float = 0.5, abnormal_threshold: float = 0.25,
                 focal_gamma: float = 2.0, simulated_per_category: int = 30, faithful_mask_order: bool = False,
                 faithful_positions: bool = False, vod_channel: str = "none", vod_position: str = "none",
                 search: str = "exact", seed: int = 0, query_batch: int = 32,
                 fusion: str = "none", cache_dir: str | None = None, device: str | None = None, progress: bool = True):
        self.backbone = backbone
        self.levels = levels
        self.image_size = image_size
        self.backbone_weights = backbone_weights
        self.grid = grid
        self.neighbourhood = neighbourhood
        self.center = center
        self.proxies = proxies
        self.heads = heads
        self.mode = mode
        self.sigma = sigma
        self.reduction = reduction
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.batch_size = batch_size
        self.train_shots = train_shots
        self.train_abnormal_shots = train_abnormal_shots
        self.train_maskless = train_maskless
        self.lr = lr
        self.weight_decay = weight_decay
        self.anomaly_fraction = anomaly_fraction
        self.abnormal_threshold = abnormal_threshold
        self.focal_gamma = focal_gamma
        self.simulated_per_category = simulated_per_category
        self.faithful_mask_order = faithful_mask_order
        self.faithful_positions = faithful_positions
        self.vod_channel = vod_channel
        self.vod_position = vod_position
        self.search = search
        self.seed = seed
        self.query_batch = query_batch
        self.cache_dir = cache_dir
        self.device = device
        self.progress = progress
        self.fusion = fusion

    # -- plumbing ----------------------------------------------------------------------------------
    def _check_params(self) -> None:
        check_fusion(self.fusion, self.name)
        if self.mode not in MODES:
            raise ValueError(f"nagl: mode must be one of {MODES}, got '{self.mode}'")
        if self.center not in CENTERS:
            raise ValueError(f"nagl: center must be one of {CENTERS}, got '{self.center}'")
        check_vod(self.vod_channel, self.vod_position, self.name)
        check_search(self.search)
        if self.train_abnormal_shots < 1 or self.train_shots < 1:
            raise ValueError("nagl: train_shots and train_abnormal_shots must be >= 1")
        if not 0 <= self.train_maskless <= 1:
            raise ValueError(f"nagl: train_maskless is a share in [0, 1], got {self.train_maskless}")

    def _build(self, dim: int) -> None:
        torch.manual_seed(self.seed)
        self.network_ = NAGLNetwork(dim, self.proxies, self.heads, self.faithful_mask_order)
        self.network_.to(self.feature_cache().device)

    def _position(self, dim: int, side: tuple[int, int], slots: int) -> torch.Tensor:
        """``(slots, H*W, D)`` position codes of the reference slots (aligned, or the faithful bug)."""
        h, w = side
        padded = -(-dim // 4) * 4
        if self.faithful_positions:
            code = sinusoidal_position_2d(padded, slots * h, w)[:dim].flatten(1).T.reshape(slots, h * w, dim)
        else:
            code = sinusoidal_position_2d(padded, h, w)[:dim].flatten(1).T[None].expand(slots, -1, -1)
        return code.to(self.feature_cache().device)

    def centred_features(self, paths: Sequence[str]) -> torch.Tensor:
        """``(B, D, H, W)`` patch features minus the fitted source mean (``center="source"``)."""
        features = self.patch_features(paths)
        if self.center == "none":
            return features
        if not hasattr(self, "feature_mean_"):
            raise RuntimeError("nagl with center='source' needs the source mean: fit it first, "
                               "or use center='none' for the training-free modes")
        return features - self.feature_mean_.to(features.device)[:, None, None]

    def _abnormal_cells(self, coverage: torch.Tensor) -> torch.Tensor:
        """``(m, N)`` mask coverage -> cells attended by Residual Mining.

        Cells covered at least ``abnormal_threshold``; a defect smaller than that everywhere keeps
        its most covered cells; a reference without any mask (image label only) is attended everywhere.
        """
        return abnormal_cells(coverage, self.abnormal_threshold)

    def _maps(self, features: torch.Tensor, bank: torch.Tensor, rows: torch.Tensor, distance: torch.Tensor,
              abnormal: list[torch.Tensor], abnormal_rows: list[torch.Tensor], cells: list[torch.Tensor],
              side: tuple[int, int], mined: torch.Tensor | None = None) -> torch.Tensor:
        """Patch maps ``(B, N)`` of B queries.

        Args:
            features: ``(B, N, D)`` query patches; ``bank`` ``(R, D)`` the normal-reference patches,
                ``rows``/``distance`` ``(B, N)`` each query patch's nearest bank row and its ``1 - cos``.
            abnormal, abnormal_rows, cells: per query, its abnormal references ``(m, N, D)``, their
                nearest bank rows ``(m, N)`` (into the same bank) and attended cells ``(m, N)``.
            mined: ``(1, P, D)`` proxies already mined from references shared by all B queries
                (:meth:`_mine`); ``None`` mines per query.
        """
        normal_similarity = 1 - distance / 2
        if self.mode == "normal_only":
            return 1 - normal_similarity
        b, n, d = features.shape
        residual_q = self.vod_residual(features - bank[rows])
        residual_a = [self.vod_residual(refs - bank[r]) for refs, r in zip(abnormal, abnormal_rows)]
        if self.mode in ("abnormal_knn", "untrained"):
            abnormal_similarity = self._abnormal_knn(residual_q, residual_a, cells)
            if self.mode == "abnormal_knn":
                return abnormal_similarity
        else:
            mined = self._mine(abnormal, residual_a, cells, side) if mined is None else mined.expand(b, -1, -1)
            position = self._position(d, side, 1)[0]       # the query's code = the first reference slot's
            abnormal_similarity = self.network_.abnormal_similarity(mined, residual_q + position, features)
        return normal_abnormal_map(abnormal_similarity, normal_similarity)

    def _mine(self, abnormal: list[torch.Tensor], residual_a: list[torch.Tensor], cells: list[torch.Tensor],
              side: tuple[int, int]) -> torch.Tensor:
        """Residual Mining: per sample, proxies ``(B, P, D)`` from its abnormal references and residuals."""
        slots = max(1, max(len(refs) for refs in abnormal))
        position = self._position(abnormal[0].shape[-1], side, slots)
        keys, allowed = stack_references(list(abnormal), list(cells), position)
        values, _ = stack_references(residual_a, list(cells), torch.zeros_like(position))
        return self.network_.mine(keys, values, allowed)

    @staticmethod
    def _abnormal_knn(residual_q: torch.Tensor, residual_a: list[torch.Tensor], cells: list[torch.Tensor]):
        """Training-free ``s_a``: ``(1 + cos)/2`` of each query residual to its nearest abnormal residual."""
        out = torch.zeros(residual_q.shape[:2], device=residual_q.device)
        for i, (res, inside) in enumerate(zip(residual_a, cells)):
            if len(res) and inside.any():
                out[i] = 1 - nearest_neighbour(residual_q[i], res[inside], "cosine")[0] / 2
        return out

    def plan(self, levels: Sequence[torch.Tensor], plan) -> None:
        """For :func:`gadlib.dryrun.dry_run`: proxies and the two attention blocks, and one step's tokens."""
        from gadlib.dryrun import count

        grid = self.aligned(levels)
        dim, cells = grid.shape[1], grid.shape[-2] * grid.shape[-1]
        self._build(dim)
        plan.modules[f"proxies ({self.proxies} x {dim})"] = self.network_.proxies.numel()
        plan.modules["Residual Mining attention"] = count(self.network_.mining)
        plan.modules["Anomaly Feature Learning attention"] = count(self.network_.feature_learning)
        abnormal_tokens = self.train_abnormal_shots * cells
        plan.per_step["query tokens (batch x cells)"] = self.batch_size * cells
        plan.per_step["Residual Mining: proxies x abnormal-reference tokens"] = (
            self.batch_size * self.proxies * abnormal_tokens)
        plan.per_step["Anomaly Feature Learning: query tokens x proxies"] = self.batch_size * cells * self.proxies
        plan.activation_values += (8 * self.batch_size * (cells + abnormal_tokens) * dim
                                   + 2 * self.heads * self.batch_size * self.proxies * (cells + abnormal_tokens))

    # -- training ----------------------------------------------------------------------------------
    def fit(self, source) -> "NAGL":
        """Train proxies and attention on source episodes (see :meth:`SourcePool.guided_episode`)."""
        from gadlib.training import SourcePool, fit_record, optimise

        self._check_params()
        cache = self.feature_cache()
        pool = SourcePool(source, cache, self.simulated_per_category, self.seed)
        grid = self.aligned(pool.levels)                                    # (I, D, h, w)
        side = tuple(grid.shape[-2:])
        tokens = grid.flatten(2).transpose(1, 2).contiguous()               # (I, N, D)
        normal_images = torch.tensor((pool.frame["label"] == 0).to_numpy())
        self.feature_mean_ = (tokens[normal_images].mean(dim=(0, 1)) if self.center == "source"
                              else torch.zeros(tokens.shape[-1]))
        tokens = tokens - self.feature_mean_
        coverage = pool.cell_coverage(side)
        self._build(tokens.shape[-1])
        trained = self.mode == "full"
        optimizer = torch.optim.AdamW(self.network_.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        total = self.epochs * self.steps_per_epoch
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [int(0.5 * total), int(0.75 * total)], 0.1)
        rng = np.random.default_rng(self.seed)
        started = time.perf_counter()
        self.network_.train()

        def step():
            episodes = [pool.guided_episode(rng, int(rng.integers(1, self.train_shots + 1)),
                                            int(rng.integers(0, self.train_abnormal_shots + 1)),
                                            self.anomaly_fraction) for _ in range(self.batch_size)]
            maskless = rng.random(len(episodes)) < self.train_maskless
            return self._train_step(tokens, coverage, episodes, side, maskless)

        history = optimise(step, optimizer, self.epochs if trained else 0, self.steps_per_epoch, "nagl training",
                           self.progress, scheduler)
        self.network_.eval()
        self.fit_record_ = fit_record(history, cache, pool, time.perf_counter() - started)
        return self

    def _train_step(self, tokens, coverage, episodes, side, maskless) -> dict[str, torch.Tensor]:
        device = self.feature_cache().device
        queries = tokens[[e.query for e in episodes]].to(device)                      # (B, N, D)
        banks, rows, distance, abnormal, abnormal_rows, cells = [], [], [], [], [], []
        for i, episode in enumerate(episodes):
            bank = tokens[episode.references].reshape(-1, tokens.shape[-1]).to(device)
            found = nearest_neighbour(queries[i], bank, "cosine")
            refs = tokens[episode.abnormal_refs].to(device)
            ref_rows = nearest_neighbour(refs.reshape(-1, refs.shape[-1]), bank, "cosine")[1].reshape(refs.shape[:2])
            offset = sum(len(b) for b in banks)         # one concatenated bank: rows shift per episode
            banks.append(bank)
            rows.append(found[1] + offset)
            distance.append(found[0])
            abnormal.append(refs)
            abnormal_rows.append(ref_rows + offset)
            reference_cover = coverage[episode.abnormal_refs].to(device)
            if maskless[i]:                                   # an image label only: attended everywhere
                reference_cover = torch.zeros_like(reference_cover)
            cells.append(self._abnormal_cells(reference_cover))
        maps = self._maps(queries, torch.cat(banks), torch.stack(rows), torch.stack(distance), abnormal,
                          abnormal_rows, cells, side)
        cover = coverage[[e.query for e in episodes]].to(device)
        target = (cover >= self.abnormal_threshold).float()
        used = (cover >= self.abnormal_threshold) | (cover == 0)     # partly covered cells are ambiguous
        labels = torch.tensor([float(e.label) for e in episodes], device=device)
        probability = maps.clamp(1e-6, 1 - 1e-6)
        return dict(focal=focal_loss(probability[used], target[used], self.focal_gamma),
                    dice=dice_loss(probability * used, target * used),
                    image=F.binary_cross_entropy(topk_mean(probability[:, None, :], 0.01).clamp(1e-6, 1 - 1e-6),
                                                 labels))

    # -- inference ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def predict_shots(self, queries: Sequence[str], references: References, shots: Sequence[int],
                      with_pixel: bool = True) -> dict[int, Scores]:
        """Scores for the first k normal references, for every k in ``shots``, with all m abnormal ones."""
        self._check_params()
        if self.mode == "full" and not hasattr(self, "network_"):
            raise RuntimeError("nagl is not fitted: call fit(source), `gad train --method nagl`, or load a checkpoint")
        shots = check_shots(references, shots)
        check_not_scored(queries, references)
        refs = list(references.normal[:shots[-1]])
        cache = self.feature_cache()
        cache.ensure(refs + list(references.abnormal) + list(queries))
        normal = self.centred_features(refs)
        side = tuple(normal.shape[-2:])
        cells_per_ref = side[0] * side[1]
        bank = to_patches(normal)
        abnormal, cells = self._abnormal_references(references, side, bank.shape[1])
        found_a = (nearest_per_group(abnormal.reshape(-1, bank.shape[1]), bank, cells_per_ref, "cosine",
                                     return_index=True, search=self.search) if len(abnormal) else None)
        # The abnormal references are the same for every query: match and mine them once per k.
        abnormal_rows = {k: nearest_in_first(*found_a, k)[1].reshape(abnormal.shape[:2]) if found_a
                         else torch.zeros(0, cells_per_ref, dtype=torch.long, device=bank.device) for k in shots}
        mined = {k: self._mine([abnormal], [self.vod_residual(abnormal - bank[abnormal_rows[k]])], [cells], side)
                 for k in shots} if self.mode == "full" else {}
        image_scores: dict[int, list] = {k: [] for k in shots}
        pixel_maps: dict[int, list] = {k: [] for k in shots}
        for start in self._bar(range(0, len(queries), self.query_batch)):
            features = self.centred_features(queries[start:start + self.query_batch])
            b = len(features)
            tokens = features.flatten(2).transpose(1, 2)
            found = nearest_per_group(to_patches(features), bank, cells_per_ref, "cosine", return_index=True,
                                      search=self.search)
            for k in shots:
                distance, rows = nearest_in_first(*found, k)
                maps = self._maps(tokens, bank, rows.reshape(b, -1), distance.reshape(b, -1), [abnormal] * b,
                                  [abnormal_rows[k]] * b, [cells] * b, side, mined.get(k))
                pixel = upsample_blur(maps.reshape(b, *side).float(), self.image_size, self.sigma,
                                      self.cell_offset(side[-1]))
                image_scores[k].append(image_score(pixel, self.reduction).cpu())
                if with_pixel:
                    pixel_maps[k].append(pixel.cpu())
        return self.fuse_global(queries, references, shots, collect_scores(image_scores, pixel_maps, with_pixel))

    def _abnormal_references(self, references: References, side: tuple[int, int], dim: int):
        """Abnormal-reference patches ``(m, N, D)`` and their attended cells ``(m, N)``."""
        device = self.feature_cache().device
        if not references.abnormal:
            cells = side[0] * side[1]
            return (torch.zeros(0, cells, dim, device=device),
                    torch.zeros(0, cells, dtype=torch.bool, device=device))
        features = self.centred_features(references.abnormal).flatten(2).transpose(1, 2)
        coverage = mask_coverage(references.masks(), references.abnormal, self.image_size, side,
                                 self.cell_offset(side[-1])).to(device)
        return features, self._abnormal_cells(coverage)


    # -- persistence -------------------------------------------------------------------------------
    def load_fitted_state(self, state: dict[str, torch.Tensor], meta: dict) -> None:
        self._check_params()
        fit = meta.get("fit") or {}
        check_backbone(self, fit)
        if "feature_mean_" in state:
            self.feature_mean_ = state["feature_mean_"]
        if "network_.proxies" in state:
            self._build(state["network_.proxies"].shape[1])
            self.network_.load_state_dict({k[len("network_."):]: v for k, v in state.items()
                                           if k.startswith("network_.")})
            self.network_.eval()
        self.fit_record_ = fit
