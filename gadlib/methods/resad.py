"""ResAD (Yao et al., NeurIPS 2024): learn the distribution of *residual* features on a source domain.

Pipeline per backbone level ``l`` (levels are never mixed):

1. feature converter -- each query feature minus its nearest feature among all positions of all k
   normal references (``residual="difference"``, the paper; ``"squared"``, the public code;
   ``"none"`` feeds raw features, an ablation);
2. feature constraintor -- Conv3x3 + BN + ReLU trained with the abnormal-invariant one-class loss
   (``constraint_loss="occ"``) or our reading of the public code's shell loss (``"shell"``);
   ``constraintor=False`` skips it (ablation);
3. distribution estimator -- a conditional normalizing flow (FrEIA AllInOneBlocks) on the *detached*
   constraintor output, per position, conditioned on a 2-D sinusoidal position code; trained with
   NLL on normal positions + the boundary-guided push-pull term.

Score: per level ``1 - exp(log p - c_l)``, upsampled, summed over levels, Gaussian sigma = 4; image
score = max. The constant ``c_l`` is the clean rule by default: ``normalization="source"`` (max normal
log-likelihood on the source, fixed at the end of training) or ``"image"`` (each image's own max);
``"transductive"`` is the public code's max over the whole target test set -- a faithful switch that
looks at the test set, reported separately.
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch
from torch import nn

from gadlib.backbones import DEFAULT_BACKBONE
from gadlib.kernels.patches import local_aggregate, to_patches
from gadlib.kernels.position import sinusoidal_position_2d
from gadlib.kernels.vod import channel_vod_grid, check_vod
from gadlib.kernels.residual import METRICS, check_search, nearest_in_shots, residual
from gadlib.kernels.scoring import image_score, upsample_blur
from gadlib.methods.base import Method, References, Scores, register_method
from gadlib.methods.features import BackboneFeatures, check_backbone, check_fusion, check_not_scored, check_shots
from gadlib.modules.constraintor import CONSTRAINT_LOSSES, FeatureConstraintor, occ_loss, shell_loss
from gadlib.modules.flow import ConditionalFlow, boundary_push_pull

RESIDUALS = ("difference", "squared", "none")
NORMALIZATIONS = ("source", "image", "transductive")


@register_method("resad")
class ResAD(BackboneFeatures, Method):
    """Residual features + constraintor + per-level conditional flow.

    Args:
        backbone, levels, image_size, backbone_weights: the frozen feature extractor (as ``knn``).
        neighbourhood: local averaging of backbone features before matching (1 = none, the paper).
        metric: nearest-reference matching, ``"l2"`` or ``"cosine"`` (public code).
        residual: ``"difference"`` (paper), ``"squared"`` (public code) or ``"none"`` (ablation); see below.
        constraintor: use the feature constraintor (``False`` = ablation).
        constraint_loss: ``"occ"`` (paper) or ``"shell"`` (public code, our reading).
        flow_blocks, clamp, position_dim: the flows (paper: 8 blocks, clamp 1.9, 256-d code).
        boundary_weight, boundary_margin, boundary_percentile: BG-SPP (lambda 1, tau 0.1, 5th pct).
        normalization: ``"source"`` (default), ``"image"`` or ``"transductive"`` (faithful switch).
        sigma, reduction: pixel-map smoothing and image score.
        epochs, steps_per_epoch, batch_size, train_shots: training length (fixed in advance: the
            last epoch is the model), queries per episode, k normal references per episode. 5 x 50 steps
            was chosen on held-out source categories (``notebooks/05_source_validation.ipynb``: 250 steps
            matched 500 within 0.4 points of image AUROC at k = 1 and 4, and kept pixel AP); it halves
            the study's ResAD training.
        residual: the paper's ``"difference"`` stays the default: on the same held-out categories it beat
            the public code's ``"squared"`` by 1.2-2.8 points of image AUROC (and 4-6 of pixel AP).
        lr, weight_decay: Adam; the learning rate drops x0.1 at 70 % and 90 % of training.
        anomaly_fraction: share of anomalous queries per episode.
        abnormal_threshold: a feature cell is abnormal when its mask covers at least this fraction;
            cells touched by a mask but below it are left out of the losses.
        simulated_per_category: anomalies simulated on each source category's normal images.
        statistics_episodes: source episodes that fix the score normalisation after training.
        max_flow_positions: positions per level per step fed to the flow (bounds CPU cost).
        vod_channel: VOD reading (A) on every level's features before matching (``"none"``, ``"ranks"``,
            ``"gaussian"``); vod_position: reading (B) on the residuals before the constraintor
            (``"none"``, ``"magnitude"``, ``"signed"``, ``"grouped"``). See ``gadlib.kernels.vod``.
        search: how query patches are matched to the normal references at inference: ``"exact"``
            (default), ``"float16"``, ``"faiss"`` or ``"faiss-ivf"`` (:mod:`gadlib.kernels.residual`).
            Training always searches exactly.
        seed: initialisation, episodes and simulation.
        fusion: ``"none"`` (default) or ``"global"``: the image score fused, label-free, with the image-level
            residual, both calibrated on the k normal references by leave-one-out
            (:meth:`~gadlib.methods.features.BackboneFeatures.fuse_global`; pixel maps unchanged; k = 1 unchanged).
        query_batch, cache_dir, device, progress: as ``knn``.
    """

    scoring_params = ("fusion", "normalization", "sigma", "reduction", "search", "query_batch", "cache_dir")
    training_seconds = 150.0
    reads_abnormal_references = False

    def __init__(self, backbone: str = DEFAULT_BACKBONE, levels: Sequence[int] | None = None,
                 image_size: int = 224, backbone_weights: str | None = None, neighbourhood: int = 1,
                 metric: str = "l2", residual: str = "difference", constraintor: bool = True,
                 constraint_loss: str = "occ", flow_blocks: int = 8, clamp: float = 1.9,
                 position_dim: int = 64, boundary_weight: float = 1.0, boundary_margin: float = 0.1,
                 boundary_percentile: float = 5.0, normalization: str = "source", sigma: float = 4.0,
                 reduction: str = "max", epochs: int = 5, steps_per_epoch: int = 50, batch_size: int = 16,
                 train_shots: int = 4, lr: float = 5e-4, weight_decay: float = 5e-4,
                 anomaly_fraction: float = 0.5, abnormal_threshold: float = 0.25,
                 simulated_per_category: int = 30, statistics_episodes: int = 20,
                 max_flow_positions: int = 4096, vod_channel: str = "none",
                 vod_position: str = "none", search: str = "exact", seed: int = 0,
                 query_batch: int = 32, fusion: str = "none", cache_dir: str | None = None, device: str | None = None,
                 progress: bool = True):
        self.backbone = backbone
        self.levels = levels
        self.image_size = image_size
        self.backbone_weights = backbone_weights
        self.neighbourhood = neighbourhood
        self.metric = metric
        self.residual = residual
        self.constraintor = constraintor
        self.constraint_loss = constraint_loss
        self.flow_blocks = flow_blocks
        self.clamp = clamp
        self.position_dim = position_dim
        self.boundary_weight = boundary_weight
        self.boundary_margin = boundary_margin
        self.boundary_percentile = boundary_percentile
        self.normalization = normalization
        self.sigma = sigma
        self.reduction = reduction
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.batch_size = batch_size
        self.train_shots = train_shots
        self.lr = lr
        self.weight_decay = weight_decay
        self.anomaly_fraction = anomaly_fraction
        self.abnormal_threshold = abnormal_threshold
        self.simulated_per_category = simulated_per_category
        self.statistics_episodes = statistics_episodes
        self.max_flow_positions = max_flow_positions
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
        for name, value, valid in [("metric", self.metric, METRICS), ("residual", self.residual, RESIDUALS),
                                   ("constraint_loss", self.constraint_loss, CONSTRAINT_LOSSES),
                                   ("normalization", self.normalization, NORMALIZATIONS)]:
            if value not in valid:
                raise ValueError(f"resad: {name} must be one of {valid}, got '{value}'")
        check_vod(self.vod_channel, self.vod_position, self.name)
        check_search(self.search)
        check_fusion(self.fusion, self.name)

    def _features(self, paths: Sequence[str]) -> list[torch.Tensor]:
        cache = self.feature_cache()
        return [channel_vod_grid(local_aggregate(level, self.neighbourhood), self.vod_channel).to(cache.device)
                for level in cache.get(paths)]

    def _build(self, channels: Sequence[int]) -> None:
        torch.manual_seed(self.seed)
        numpy_state = np.random.get_state()
        np.random.seed(self.seed)  # FrEIA draws its soft permutations from numpy's global generator
        self.constraintors_ = nn.ModuleList(
            [FeatureConstraintor(c) if self.constraintor else nn.Identity() for c in channels])
        self.flows_ = nn.ModuleList([ConditionalFlow(c, self.position_dim, self.flow_blocks, self.clamp)
                                     for c in channels])
        np.random.set_state(numpy_state)
        self.source_logp_max_ = torch.zeros(len(channels))
        self.to_device()

    def to_device(self) -> None:
        device = self.feature_cache().device
        self.constraintors_.to(device)
        self.flows_.to(device)

    def _positions(self, level: int, shape: tuple[int, int]) -> torch.Tensor:
        """``(H * W, P)`` position codes of a level's grid, row-major like :func:`to_patches`."""
        code = sinusoidal_position_2d(self.position_dim, *shape)
        return code.flatten(1).T.to(self.feature_cache().device)

    def _residual(self, queries: torch.Tensor, bank: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        """Residual ``(B, C, H, W)`` of query features against matched ``bank`` rows (or raw features)."""
        if self.residual == "none":
            return queries
        b, c, h, w = queries.shape
        res = self.vod_residual(residual(to_patches(queries), bank, rows, self.residual))
        return res.reshape(b, h, w, c).permute(0, 3, 1, 2)

    def _episode_residual(self, features: torch.Tensor, episode) -> torch.Tensor:
        """Residuals ``(B, C, H, W)`` of a training episode's queries against its references (one level)."""
        queries = features[torch.from_numpy(episode.queries)].to(self.feature_cache().device)
        bank = to_patches(features[torch.from_numpy(episode.references)].to(queries.device))
        if self.residual == "none":
            return self._residual(queries, bank, None)
        # The nearest row of the whole bank, found as nearest_in_shots finds it (per-reference minima first,
        # then rows inside the winning reference only): the same rows as nearest_neighbour, about twice as fast.
        cells, shots = features.shape[-2] * features.shape[-1], len(episode.references)
        rows = nearest_in_shots(to_patches(queries), bank, cells, [shots], self.metric)[shots][1]
        return self._residual(queries, bank, rows)

    def _log_likelihood(self, level: int, residuals: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, H, W)`` per-dimension log-likelihood of the constrained residuals.

        Inference only (the flow's grid path: no gradients); training calls the flow itself.
        """
        b, c, h, w = residuals.shape
        constrained = to_patches(self.constraintors_[level](residuals))
        return self.flows_[level].log_likelihood_grid(constrained, self._positions(level, (h, w))).reshape(b, h, w)

    def plan(self, levels: Sequence[torch.Tensor], plan) -> None:
        """For :func:`gadlib.dryrun.dry_run`: each level's constraintor and flow, and what one step puts through
        them (``levels``: one image's backbone levels)."""
        from gadlib.dryrun import count

        channels = [level.shape[1] for level in levels]
        self._build(channels)
        for (level, c, info) in zip(levels, channels, plan.levels):
            i, cells = info["level"], self.batch_size * level.shape[-2] * level.shape[-1]
            flowed = min(cells, self.max_flow_positions)
            index = plan.levels.index(info)
            plan.modules[f"constraintor, level {i}"] = count(self.constraintors_[index])
            plan.modules[f"flow, level {i} ({self.flow_blocks} blocks)"] = count(self.flows_[index])
            plan.per_step[f"level {i}: query cells through the constraintor"] = cells
            plan.per_step[f"level {i}: positions through the flow (max_flow_positions)"] = flowed
            plan.per_step[f"level {i}: reference cells searched per query cell"] = (
                self.train_shots * level.shape[-2] * level.shape[-1])
            plan.activation_values += 4 * cells * c + flowed * (c + self.position_dim) * (2 * self.flow_blocks + 2)

    # -- training ----------------------------------------------------------------------------------
    def fit(self, source) -> "ResAD":
        """Train constraintors and flows on a source-domain schema table (see :class:`SourcePool`)."""
        from gadlib.training import SourcePool, fit_record, optimise

        self._check_params()
        cache = self.feature_cache()
        pool = SourcePool(source, cache, self.simulated_per_category, self.seed)
        levels = [channel_vod_grid(local_aggregate(level, self.neighbourhood), self.vod_channel)
                  for level in pool.levels]
        self._build([level.shape[1] for level in levels])
        params = list(self.constraintors_.parameters()) + list(self.flows_.parameters())
        optimizer = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        total = self.epochs * self.steps_per_epoch
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [int(0.7 * total), int(0.9 * total)], 0.1)
        rng = np.random.default_rng(self.seed)
        started = time.perf_counter()
        self.constraintors_.train()
        self.flows_.train()

        def step():
            episode = pool.episode(rng, self.train_shots, self.batch_size, self.anomaly_fraction)
            return self._train_step(levels, pool.abnormal_fraction, episode, rng)

        history = optimise(step, optimizer, self.epochs, self.steps_per_epoch, "resad training", self.progress, scheduler)
        self.constraintors_.eval()
        self.flows_.eval()
        self.source_logp_max_ = self._source_constants(levels, pool, rng, self.statistics_episodes)
        self.fit_record_ = fit_record(history, cache, pool, time.perf_counter() - started)
        return self

    def _train_step(self, levels, fractions, episode, rng) -> dict[str, torch.Tensor]:
        device = self.feature_cache().device
        queries_index = torch.from_numpy(episode.queries)
        losses = {"constraint": 0.0, "nll": 0.0, "boundary": 0.0}
        for level, (features, fraction) in enumerate(zip(levels, fractions)):
            res = self._episode_residual(features, episode)
            cover = fraction[queries_index].to(device).flatten()
            abnormal = cover >= self.abnormal_threshold
            used = abnormal | (cover == 0)          # cells partly covered by a mask are ambiguous
            constrained = self.constraintors_[level](res)
            flat_in, flat_out = to_patches(res)[used], to_patches(constrained)[used]
            if self.constraintor:
                loss_fn = occ_loss if self.constraint_loss == "occ" else shell_loss
                losses["constraint"] = losses["constraint"] + loss_fn(flat_out, flat_in, abnormal[used])
            cells = res.shape[-2] * res.shape[-1]
            position = torch.arange(cells, device=device).repeat(len(queries_index))[used]   # row-major, per query
            pick = torch.from_numpy(rng.permutation(len(flat_out))[:self.max_flow_positions]).to(device)
            log_p = self.flows_[level].log_likelihood_at(flat_out.detach()[pick],
                                                         self._positions(level, res.shape[-2:]), position[pick])
            is_abnormal = abnormal[used][pick]
            if (~is_abnormal).any():
                losses["nll"] = losses["nll"] - log_p[~is_abnormal].mean()
            losses["boundary"] = losses["boundary"] + self.boundary_weight * boundary_push_pull(
                log_p, is_abnormal, self.boundary_margin, self.boundary_percentile)
        return {k: v if torch.is_tensor(v) else torch.zeros((), device=device) for k, v in losses.items()}

    @torch.inference_mode()
    def _source_constants(self, levels, pool, rng, episodes: int = 20) -> torch.Tensor:
        """Per level, the largest log-likelihood of normal cells over source episodes (fixed after fit)."""
        best = torch.full((len(levels),), -float("inf"))
        for _ in range(episodes):
            episode = pool.episode(rng, self.train_shots, self.batch_size, self.anomaly_fraction)
            for level, (features, fraction) in enumerate(zip(levels, pool.abnormal_fraction)):
                log_p = self._log_likelihood(level, self._episode_residual(features, episode)).cpu()
                normal = fraction[torch.from_numpy(episode.queries)] == 0
                best[level] = max(best[level], log_p[normal].max())
        return best

    # -- inference ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def predict_shots(self, queries: Sequence[str], references: References, shots: Sequence[int],
                      with_pixel: bool = True) -> dict[int, Scores]:
        """Scores for the first k normal references, for every k in ``shots`` (one matching pass)."""
        if not hasattr(self, "flows_"):
            raise RuntimeError("resad is not fitted: call fit(source), `gad train`, or load a checkpoint")
        self._check_params()
        shots = check_shots(references, shots)
        check_not_scored(queries, references)
        refs = list(references.normal[:shots[-1]])
        self.feature_cache().ensure(refs + list(queries))
        ref_levels = self._features(refs)
        banks = [to_patches(level) for level in ref_levels]
        log_p: dict[int, list[list[torch.Tensor]]] = {k: [[] for _ in banks] for k in shots}
        batches = range(0, len(queries), self.query_batch)
        for start in self._bar(batches):
            for level, features in enumerate(self._features(queries[start:start + self.query_batch])):
                if self.residual == "none":     # raw features do not depend on k: one flow pass serves all
                    raw = self._log_likelihood(level, features).cpu()
                    for k in shots:
                        log_p[k][level].append(raw)
                    continue
                cells = ref_levels[level].shape[-2] * ref_levels[level].shape[-1]
                found = nearest_in_shots(to_patches(features), banks[level], cells, shots, self.metric,
                                         search=self.search)
                for k in shots:
                    res = self._residual(features, banks[level], found[k][1])
                    log_p[k][level].append(self._log_likelihood(level, res).cpu())
        scores = {k: self._scores([torch.cat(parts) for parts in log_p[k]], with_pixel) for k in shots}
        return self.fuse_global(queries, references, shots, scores)


    def _scores(self, log_p: list[torch.Tensor], with_pixel: bool) -> Scores:
        """Normalised per-level scores -> summed, smoothed pixel maps and image scores."""
        maps = None
        for level, values in enumerate(log_p):
            values = values.double()
            if self.normalization == "source":
                shift = self.source_logp_max_[level].double()
            elif self.normalization == "image":
                shift = values.flatten(1).max(1).values[:, None, None]
            else:  # transductive: the max over every query of this target (public code)
                shift = values.max()
            level_map = upsample_blur(1 - torch.exp(values - shift), self.image_size, self.sigma,
                                      self.feature_cache().backbone.level_offsets()[level])
            maps = level_map if maps is None else maps + level_map
        return Scores(image=image_score(maps, self.reduction).numpy(),
                      pixel=maps.float().numpy() if with_pixel else None)

    # -- persistence -------------------------------------------------------------------------------
    def load_fitted_state(self, state: dict[str, torch.Tensor], meta: dict) -> None:
        self._check_params()
        fit = meta.get("fit") or {}
        check_backbone(self, fit)
        self._build(self.feature_cache().backbone.channels)
        self.constraintors_.load_state_dict({k[len("constraintors_."):]: v for k, v in state.items()
                                             if k.startswith("constraintors_.")})
        self.flows_.load_state_dict({k[len("flows_."):]: v for k, v in state.items() if k.startswith("flows_.")})
        self.source_logp_max_ = state["source_logp_max_"]
        self.fit_record_ = fit
        self.to_device()
        self.constraintors_.eval()
        self.flows_.eval()
