"""VOD (2026): value-order decomposition inside the residual pipeline, with synthetic abnormal references.

Only VOD's abstract is public (see ``gadlib.kernels.vod`` for the two readings we implement). Its claim:
after the decomposition, normal residuals align with each other across categories, defect types and
domains, abnormal residuals align with each other, and the two stay separable -- so that a detector
needs only the target's *normal* references plus *synthetic* abnormal ones made by cut-and-paste.

This method is that claim as a pipeline, every step switchable so a study can take it apart:

1. patch features of the query and of the k normal references (as ``knn``), with reading (A)
   (``vod_channel``: per channel over positions, values replaced by ranks or Gaussian quantiles);
2. residual ``r`` = each query patch minus its nearest normal-reference patch (L2);
3. reading (B) on ``r`` (``vod_position``: per position over channels, sorted magnitudes);
4. two patch scores, both in [0, 1]:

   * **head**: a small MLP on ``r``, trained on the *source* (normal queries against normal
     references, anomalies real or simulated by cut-and-paste / noise blobs), focal loss, a training
     length fixed in advance (last epoch kept). Its input is standardised per dimension by the normal
     source residuals: with one global scale, the head on sorted magnitudes (reading B) stayed
     constant (image AUROC 0.20-0.51 on held-out *source* categories washer, woven_fabric and a seen
     one); per dimension it reached 0.94-0.99 there (and no decomposition 0.75-0.96). Nothing here
     was looked at on a target;
   * **references**: ``d_N / (d_N + d_A)``, where ``d_N = |r|`` is the distance to the normal class
     (whose residuals are ~0) and ``d_A`` the distance to the nearest *abnormal-reference residual*
     inside its mask. Abnormal references are the episode's when it brings some, otherwise
     ``synthetic_references`` cut-and-paste images made from the target's own normal references.

``scoring``: ``"gated"`` (default: ``|r|`` times the mean of the two), ``"both"`` (the mean of the two, the
first round's default), ``"head"``, ``"references"``, or ``"distance"`` (``|r|`` alone: kNN in the VOD
space -- reading (B) keeps ``|r|``, so there it equals plain kNN).

Why ``"gated"``: both parts are bounded and scale-free, so ``"both"`` throws away how far a patch is from
the normal references, the one signal every detector here shares. On an MVTec-style folder of real
photographs with defect types never seen (issue 15), ``"both"`` scored near chance where kNN did not; on
source categories held out of training the references part was the weakest (cut-and-paste references
made from the target's own normal images give "abnormal" residuals close to normal ones, so ``d_A`` is
small for normal patches too). ``"gated"`` keeps the distance as the evidence of a deviation and lets the
learned parts say how anomalous such a deviation looks; it was chosen on held-out source categories
(``notebooks/05_source_validation.ipynb``).
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from gadlib.backbones import DEFAULT_BACKBONE
from gadlib.kernels.patches import to_patches
from gadlib.kernels.residual import (check_search, nearest_in_first, nearest_in_shots, nearest_neighbour,
                                     nearest_per_group)
from gadlib.kernels.scoring import image_score, upsample_blur
from gadlib.kernels.vod import check_vod
from gadlib.methods.base import Method, References, Scores, register_method
from gadlib.methods.features import (BackboneFeatures, abnormal_cells, check_backbone, check_fusion,
                                    check_not_scored, check_shots, collect_scores, mask_coverage)
from gadlib.modules.losses import focal_loss

SCORINGS = ("gated", "both", "head", "references", "distance")


class ResidualHead(nn.Module):
    """Patch residual ``(..., D)`` -> anomaly logit ``(...)``: Linear -> ReLU -> Linear."""

    def __init__(self, dim: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, residuals: torch.Tensor) -> torch.Tensor:
        return self.net(residuals)[..., 0]


@register_method("vod")
class VOD(BackboneFeatures, Method):
    """Residual features with value-order decomposition, a source-trained head and synthetic references.

    Args:
        backbone, levels, image_size, backbone_weights, grid, neighbourhood: frozen features, as ``knn``.
        vod_channel: reading (A): ``"gaussian"`` (default), ``"ranks"`` or ``"none"``.
        vod_position: reading (B): ``"magnitude"`` (default), ``"signed"``, ``"grouped"`` or ``"none"``.
        scoring: ``"gated"``, ``"both"``, ``"head"``, ``"references"`` or ``"distance"`` (module docstring).
        synthetic_references: cut-and-paste abnormal references made from the normal references when
            an episode brings no abnormal reference (0 = none; the references score is then 0.5).
        hidden: width of the head.
        epochs, steps_per_epoch, batch_size, train_shots: training length fixed in advance, queries
            per step, normal references per episode (k drawn from 1..train_shots).
        lr, weight_decay: AdamW.
        anomaly_fraction, abnormal_threshold, focal_gamma, simulated_per_category: as ``nagl``.
        sigma, reduction: pixel-map smoothing and image score.
        search: how query patches are matched to the normal references at inference: ``"exact"``
            (default), ``"float16"``, ``"faiss"`` or ``"faiss-ivf"`` (:mod:`gadlib.kernels.residual`).
            Training always searches exactly.
        fusion: ``"none"`` (default) or ``"global"``: the image score fused, label-free, with the image-level
            residual, both calibrated on the k normal references by leave-one-out
            (:meth:`~gadlib.methods.features.BackboneFeatures.fuse_global`; pixel maps unchanged; k = 1 unchanged).
        seed, query_batch, cache_dir, device, progress: as ``resad``.
    """

    scoring_params = ("fusion", "scoring", "synthetic_references", "sigma", "reduction", "search", "query_batch",
                      "cache_dir")
    training_seconds = 25.0

    def __init__(self, backbone: str = DEFAULT_BACKBONE, levels: Sequence[int] | None = None,
                 image_size: int = 224, backbone_weights: str | None = None, grid: str | int = "coarsest",
                 neighbourhood: int = 3, vod_channel: str = "gaussian", vod_position: str = "magnitude",
                 scoring: str = "gated", synthetic_references: int = 2, hidden: int = 64, epochs: int = 10,
                 steps_per_epoch: int = 50, batch_size: int = 16, train_shots: int = 4, lr: float = 1e-3,
                 weight_decay: float = 1e-4, anomaly_fraction: float = 0.5, abnormal_threshold: float = 0.25,
                 focal_gamma: float = 2.0, simulated_per_category: int = 30, sigma: float = 4.0,
                 reduction: str = "max", search: str = "exact", seed: int = 0, query_batch: int = 64,
                 fusion: str = "none", cache_dir: str | None = None, device: str | None = None, progress: bool = True):
        self.backbone = backbone
        self.levels = levels
        self.image_size = image_size
        self.backbone_weights = backbone_weights
        self.grid = grid
        self.neighbourhood = neighbourhood
        self.vod_channel = vod_channel
        self.vod_position = vod_position
        self.scoring = scoring
        self.synthetic_references = synthetic_references
        self.hidden = hidden
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.batch_size = batch_size
        self.train_shots = train_shots
        self.lr = lr
        self.weight_decay = weight_decay
        self.anomaly_fraction = anomaly_fraction
        self.abnormal_threshold = abnormal_threshold
        self.focal_gamma = focal_gamma
        self.simulated_per_category = simulated_per_category
        self.sigma = sigma
        self.reduction = reduction
        self.search = search
        self.seed = seed
        self.query_batch = query_batch
        self.cache_dir = cache_dir
        self.device = device
        self.progress = progress
        self.fusion = fusion

    # -- plumbing ----------------------------------------------------------------------------------
    def _check_params(self) -> None:
        check_vod(self.vod_channel, self.vod_position, self.name)
        check_search(self.search)
        check_fusion(self.fusion, self.name)
        if self.scoring not in SCORINGS:
            raise ValueError(f"vod: scoring must be one of {SCORINGS}, got '{self.scoring}'")
        if self.synthetic_references < 0 or self.train_shots < 1:
            raise ValueError("vod: synthetic_references must be >= 0 and train_shots >= 1")

    def residuals(self, features: torch.Tensor, bank: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Query patches ``(N, D)`` minus their matched ``bank`` rows, then reading (B): ``(N, D)``."""
        return self.vod_residual(features - bank[rows])

    def _head_probability(self, residuals: torch.Tensor) -> torch.Tensor:
        shift, scale = self.input_mean_.to(residuals.device), self.input_std_.to(residuals.device)
        return torch.sigmoid(self.head_((residuals - shift) / scale))

    def plan(self, levels: Sequence[torch.Tensor], plan) -> None:
        """For :func:`gadlib.dryrun.dry_run`: the residual head, and the residuals one step puts through it."""
        from gadlib.dryrun import count

        grid = self.aligned(levels)
        dim, cells = grid.shape[1], grid.shape[-2] * grid.shape[-1]
        plan.modules["residual head"] = count(ResidualHead(dim, self.hidden))
        plan.per_step["residuals through the head (batch x cells)"] = self.batch_size * cells
        plan.per_step["reference cells searched per query cell"] = self.train_shots * cells
        plan.activation_values += self.batch_size * cells * (2 * dim + 2 * self.hidden)

    # -- training ----------------------------------------------------------------------------------
    def fit(self, source) -> "VOD":
        """Train the head on source episodes (see :meth:`SourcePool.episode`)."""
        from gadlib.training import SourcePool, fit_record, optimise

        self._check_params()
        cache = self.feature_cache()
        pool = SourcePool(source, cache, self.simulated_per_category, self.seed)
        grid = self.aligned(pool.levels)                                    # (I, D, h, w), reading (A) applied
        tokens = grid.flatten(2).transpose(1, 2).contiguous()               # (I, N, D)
        coverage = pool.cell_coverage(grid.shape[-2:])
        rng = np.random.default_rng(self.seed)
        torch.manual_seed(self.seed)
        self.head_ = ResidualHead(tokens.shape[-1], self.hidden).to(cache.device)
        # Per-dimension mean and spread of normal source residuals: a fixed input standardisation of the
        # head (reading (B) makes dimension 0 the largest deviation, on another scale than the last).
        normal = torch.cat([self._episode(tokens, coverage, pool.episode(rng, self.train_shots, self.batch_size,
                                                                         0.0))[0] for _ in range(10)]).cpu()
        self.input_mean_, self.input_std_ = normal.mean(0), normal.std(0).clamp(min=1e-6)
        optimizer = torch.optim.AdamW(self.head_.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        started = time.perf_counter()
        self.head_.train()

        def step():
            episode = pool.episode(rng, int(rng.integers(1, self.train_shots + 1)), self.batch_size,
                                   self.anomaly_fraction)
            res, cover = self._episode(tokens, coverage, episode)
            target = (cover >= self.abnormal_threshold).float()
            used = (cover >= self.abnormal_threshold) | (cover == 0)     # partly covered cells are ambiguous
            probability = self._head_probability(res[used]).clamp(1e-6, 1 - 1e-6)
            return dict(focal=focal_loss(probability, target[used], self.focal_gamma))

        history = optimise(step, optimizer, self.epochs, self.steps_per_epoch, "vod training", self.progress)
        self.head_.eval()
        self.fit_record_ = fit_record(history, cache, pool, time.perf_counter() - started)
        return self

    def _episode(self, tokens: torch.Tensor, coverage: torch.Tensor, episode) -> tuple[torch.Tensor, torch.Tensor]:
        """Residuals ``(Q*N, D)`` of an episode's query patches and their mask coverage ``(Q*N,)``."""
        device = self.feature_cache().device
        bank = tokens[episode.references].reshape(-1, tokens.shape[-1]).to(device)
        queries = tokens[episode.queries].reshape(-1, tokens.shape[-1]).to(device)
        return (self.residuals(queries, bank, nearest_neighbour(queries, bank, "l2")[1]),
                coverage[episode.queries].flatten().to(device))

    # -- inference ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def predict_shots(self, queries: Sequence[str], references: References, shots: Sequence[int],
                      with_pixel: bool = True) -> dict[int, Scores]:
        """Scores for the first k normal references, for every k in ``shots``, in one matching pass."""
        self._check_params()
        if self.scoring in ("gated", "both", "head") and not hasattr(self, "head_"):
            raise RuntimeError("vod is not fitted: call fit(source), `gad train --method vod`, or load a "
                               "checkpoint (scoring='references' or 'distance' need no training)")
        shots = check_shots(references, shots)
        check_not_scored(queries, references)
        refs = list(references.normal[:shots[-1]])
        abnormal_sets = {k: self._abnormal_references(references, k) for k in shots}
        cache = self.feature_cache()
        cache.ensure(refs + list(queries) + sorted({p for paths, _ in abnormal_sets.values() for p in paths}))
        normal = self.patch_features(refs)
        side = tuple(normal.shape[-2:])
        cells = side[0] * side[1]
        bank = to_patches(normal)
        abnormal = self._abnormal_residuals(bank, cells, abnormal_sets, side)
        image_scores: dict[int, list] = {k: [] for k in shots}
        pixel_maps: dict[int, list] = {k: [] for k in shots}
        for start in self._bar(range(0, len(queries), self.query_batch)):
            features = to_patches(self.patch_features(queries[start:start + self.query_batch]))
            b = len(features) // cells
            found = nearest_in_shots(features, bank, cells, shots, "l2", search=self.search)
            for k in shots:
                res = self.residuals(features, bank, found[k][1])
                patch = self._patch_scores(res, abnormal[k]).reshape(b, *side)
                maps = upsample_blur(patch.float(), self.image_size, self.sigma, self.cell_offset(side[-1]))
                image_scores[k].append(image_score(maps, self.reduction).cpu())
                if with_pixel:
                    pixel_maps[k].append(maps.cpu())
        return self.fuse_global(queries, references, shots, collect_scores(image_scores, pixel_maps, with_pixel))

    def _patch_scores(self, res: torch.Tensor, abnormal: torch.Tensor) -> torch.Tensor:
        """Patch scores ``(N,)`` of residuals ``(N, D)`` given abnormal-reference residuals ``(M, D)``."""
        distance = res.norm(dim=-1)
        if self.scoring == "distance":
            return distance
        parts = []
        if self.scoring in ("gated", "both", "head"):
            parts.append(self._head_probability(res))
        if self.scoring in ("gated", "both", "references"):
            if len(abnormal):
                to_abnormal = nearest_neighbour(res, abnormal, "l2")[0]
                parts.append(distance / (distance + to_abnormal).clamp(min=1e-12))
            else:
                parts.append(torch.full_like(distance, 0.5))
        mean = torch.stack(parts).mean(0)
        return distance * mean if self.scoring == "gated" else mean

    def _abnormal_references(self, references: References, k: int) -> tuple[list[str], list[str | None]]:
        """The episode's abnormal references, or cut-and-paste ones made from the first k normal ones."""
        if references.abnormal:
            return list(references.abnormal), references.masks()
        if not self.synthetic_references or self.scoring in ("head", "distance"):
            return [], []
        from gadlib.cache import default_cache_dir
        from gadlib.data.references import simulate_references

        sources = [references.normal[i % k] for i in range(self.synthetic_references)]
        root = Path(self.cache_dir) if self.cache_dir else default_cache_dir()
        # The draw depends on all sources, so they name it: one file name never holds two images.
        target = "vod/" + hashlib.sha1("|".join(sources).encode()).hexdigest()[:12]
        return simulate_references(sources, self.seed, target, root / "simulated" / "vod")

    def _abnormal_residuals(self, bank: torch.Tensor, cells: int, sets: dict[int, tuple[list[str], list]],
                            side: tuple[int, int]) -> dict[int, torch.Tensor]:
        """Per k, residuals ``(M, D)`` of its abnormal references' patches inside their masks, against the
        first k normal references. References shared by several k (an episode's own) are read and matched once."""
        out, matched = {}, {}
        for k, (paths, masks) in sets.items():
            if not paths:
                out[k] = torch.zeros(0, bank.shape[1], device=bank.device)
                continue
            if tuple(paths) not in matched:
                features = to_patches(self.patch_features(paths))
                coverage = mask_coverage(masks, paths, self.image_size, side, self.cell_offset(side[-1]))
                inside = abnormal_cells(coverage, self.abnormal_threshold)
                matched[tuple(paths)] = (features, nearest_per_group(features, bank, cells, "l2", return_index=True),
                                         inside.flatten().to(features.device))
            features, found, inside = matched[tuple(paths)]
            out[k] = self.residuals(features, bank, nearest_in_first(*found, k)[1])[inside]
        return out

    # -- persistence -------------------------------------------------------------------------------
    def load_fitted_state(self, state: dict[str, torch.Tensor], meta: dict) -> None:
        self._check_params()
        fit = meta.get("fit") or {}
        check_backbone(self, fit)
        if "input_std_" in state:
            weight = state["head_.net.0.weight"]
            self.head_ = ResidualHead(weight.shape[1], weight.shape[0]).to(self.feature_cache().device)
            self.head_.load_state_dict({k[len("head_."):]: v for k, v in state.items() if k.startswith("head_.")})
            self.head_.eval()
            self.input_mean_, self.input_std_ = state["input_mean_"], state["input_std_"]
        self.fit_record_ = fit
