"""InCTRL (Zhu & Pang, CVPR 2024): in-context residual learning from a few normal references.

For a query and k normal references (references encoded once per episode):

1. patch residual map -- per backbone level, each query patch's ``(1 - cos) / 2`` to its nearest
   reference patch (all positions of all references), mean over levels; ``s_p`` = its maximum;
2. image residual -- an adapter (Linear + ReLU) on the pooled image embeddings; the mean adapted
   reference embedding minus the adapted query embedding goes through an MLP head with BatchNorm:
   ``s_i``;
3. text prior ``s_t`` (optional) -- CLIP zero-shot normal/anomalous prompt score, only with local
   open_clip weights (:mod:`gadlib.modules.text_prior`); without it the method is *InCTRL-vision*;
4. holistic head -- ``s_i`` (and ``s_t``) added to every entry of the patch map, then an MLP: ``s_h``;
   final score ``(s_h + s_p) / 2`` (the paper's sum of the two, as the public code writes it).

The image score can be any one term (``score``: ``"patch"`` = ``s_p``, ``"image"`` = ``s_i``,
``"holistic"`` = ``s_h``) for the ablation, and the final score can combine the terms on one scale
(``combination="source_z"``): ``s_h`` is a sigmoid whose BatchNorm statistics come from the source, so on a
far target it saturates at 0 or 1 and its half of the mean swamps ``s_p`` (which spans about 0.05-0.3);
``"source_z"`` averages ``logit(s_h)`` and ``s_p`` each standardised by its mean and spread over normal
source queries (fixed at the end of training, like ResAD's source constant), so neither term is lost.

Trained on balanced source batches (8 normal + 8 anomalous of one category) with focal loss on the
final score and on ``s_i``; the epoch count is fixed in advance and the last epoch kept. The pixel
map we return is the patch residual map (upsampled, sigma = 4), which the paper does not evaluate.

Faithful switches (off by default): ``faithful_double_sigmoid`` (the losses squash probabilities a
second time) and ``faithful_reshape`` (query tokens of a batch are reshaped without the transpose,
so with batch > 1 patches of different queries are mixed). The hand-picked epoch is not offered.
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gadlib.backbones import DEFAULT_BACKBONE
from gadlib.kernels.patches import local_aggregate
from gadlib.kernels.vod import channel_vod_grid, check_vod
from gadlib.kernels.residual import check_search, nearest_per_group
from gadlib.kernels.scoring import upsample_blur
from gadlib.methods.base import Method, References, Scores, register_method
from gadlib.methods.features import (BackboneFeatures, check_backbone, check_fusion, check_not_scored, check_shots,
                                    collect_scores)
from gadlib.modules.losses import focal_loss

SCORES = ("final", "patch", "image", "holistic")
COMBINATIONS = ("mean", "source_z")
LOGIT_EPS = 1e-6          # s_h is clamped to [eps, 1 - eps] before its logit


class InCTRLHeads(nn.Module):
    """The learned part: image-residual adapter and head, and the holistic head over the patch map."""

    def __init__(self, embedding_dim: int, cells: int, hidden: int = 128, text_prior: bool = False):
        super().__init__()
        self.adapter = nn.Sequential(nn.Linear(embedding_dim, embedding_dim), nn.ReLU())
        self.image_head = nn.Sequential(nn.Linear(embedding_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                        nn.Linear(hidden, 1))
        self.holistic_head = nn.Sequential(nn.Linear(cells, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                           nn.Linear(hidden, 1))
        self.text_prior = text_prior

    def forward(self, patch_map: torch.Tensor, query_embedding: torch.Tensor, reference_embedding: torch.Tensor,
                text_score: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``patch_map (B, N)``, embeddings ``(B, C)`` and ``(k, C)`` -> probabilities ``(B,)`` by name."""
        residual = self.adapter(reference_embedding).mean(0, keepdim=True) - self.adapter(query_embedding)
        image = torch.sigmoid(self.image_head(residual)[:, 0])
        context = image if text_score is None else image + text_score
        holistic = torch.sigmoid(self.holistic_head(patch_map + context[:, None])[:, 0])
        patch = patch_map.max(dim=1).values
        return dict(image=image, holistic=holistic, patch=patch, final=(holistic + patch) / 2)


@register_method("inctrl")
class InCTRL(BackboneFeatures, Method):
    """Multi-level patch residuals + image residual + holistic head.

    Args:
        backbone, levels, image_size, backbone_weights, neighbourhood: frozen features as ``knn``;
            every level is a "layer" of the patch residual (InCTRL: CLIP ViT-B/16+ blocks 7, 9, 11).
            Levels are pooled to the coarsest grid; the image embedding is the deepest level's mean.
        hidden: width of the MLP heads.
        text_weights, clip_model: local open_clip weights (and architecture) for the text prior;
            ``None`` = InCTRL-vision.
        sigma: smoothing of the returned pixel map.
        epochs, steps_per_epoch, batch_size: training length fixed in advance (last epoch kept) and
            queries per step (half normal, half anomalous).
        train_shots: per step k is drawn from 1..train_shots.
        lr, weight_decay: AdamW (paper: 1e-3).
        focal_gamma: focal-loss focusing parameter.
        simulated_per_category: anomalies simulated on each source category's normal images.
        statistics_episodes: source episodes that fix the score normalisation after training.
        faithful_double_sigmoid, faithful_reshape: the public code's bugs, as named switches.
        score: the image score: ``"final"`` (default), or one term for the ablation: ``"patch"`` (``s_p``),
            ``"image"`` (``s_i``), ``"holistic"`` (``s_h``). Scoring only: one trained model serves all.
        combination: how ``"final"`` joins ``s_h`` and ``s_p``: ``"mean"`` (the paper's, default) or
            ``"source_z"`` (each standardised on normal source queries, module docstring). Scoring only.
        vod_channel: VOD reading (A) on each level's patch tokens (``"none"``, ``"ranks"``, ``"gaussian"``).
            The image embedding stays the raw deepest-level mean: under (A) every channel's mean over
            positions is the same constant. Reading (B) does not apply: InCTRL's patch residual is a
            cosine distance, not a residual vector.
        search: how query patches are matched to the normal references at inference: ``"exact"``
            (default), ``"float16"``, ``"faiss"`` or ``"faiss-ivf"`` (:mod:`gadlib.kernels.residual`).
            Training always searches exactly.
        fusion: ``"none"`` (default) or ``"global"``: the image score fused, label-free, with the image-level
            residual, both calibrated on the k normal references by leave-one-out
            (:meth:`~gadlib.methods.features.BackboneFeatures.fuse_global`; pixel maps unchanged; k = 1 unchanged).
        seed, query_batch, cache_dir, device, progress: as ``resad``.
    """

    scoring_params = ("fusion", "sigma", "score", "combination", "search", "query_batch", "cache_dir")
    training_seconds = 35.0
    reads_abnormal_references = False

    def __init__(self, backbone: str = DEFAULT_BACKBONE, levels: Sequence[int] | None = None,
                 image_size: int = 224, backbone_weights: str | None = None, neighbourhood: int = 3,
                 hidden: int = 128, text_weights: str | None = None, clip_model: str = "ViT-B-16-plus-240",
                 sigma: float = 4.0, epochs: int = 10, steps_per_epoch: int = 100, batch_size: int = 16,
                 train_shots: int = 8, lr: float = 1e-3, weight_decay: float = 1e-4, focal_gamma: float = 2.0,
                 simulated_per_category: int = 30, statistics_episodes: int = 20,
                 faithful_double_sigmoid: bool = False,
                 faithful_reshape: bool = False, score: str = "final", combination: str = "mean",
                 vod_channel: str = "none", search: str = "exact", seed: int = 0,
                 query_batch: int = 32,
                 fusion: str = "none", cache_dir: str | None = None, device: str | None = None, progress: bool = True):
        self.backbone = backbone
        self.levels = levels
        self.image_size = image_size
        self.backbone_weights = backbone_weights
        self.neighbourhood = neighbourhood
        self.hidden = hidden
        self.text_weights = text_weights
        self.clip_model = clip_model
        self.sigma = sigma
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.batch_size = batch_size
        self.train_shots = train_shots
        self.lr = lr
        self.weight_decay = weight_decay
        self.focal_gamma = focal_gamma
        self.simulated_per_category = simulated_per_category
        self.statistics_episodes = statistics_episodes
        self.faithful_double_sigmoid = faithful_double_sigmoid
        self.faithful_reshape = faithful_reshape
        self.score = score
        self.combination = combination
        self.vod_channel = vod_channel
        self.search = search
        self.seed = seed
        self.query_batch = query_batch
        self.cache_dir = cache_dir
        self.device = device
        self.progress = progress
        self.fusion = fusion

    @property
    def variant(self) -> str:
        """``"InCTRL"`` with the text prior, ``"InCTRL-vision"`` without it."""
        return "InCTRL" if self.text_weights else "InCTRL-vision"

    def _check_params(self) -> None:
        check_vod(self.vod_channel, "none", self.name)
        check_search(self.search)
        check_fusion(self.fusion, self.name)
        for name, value, valid in (("score", self.score, SCORES), ("combination", self.combination, COMBINATIONS)):
            if value not in valid:
                raise ValueError(f"inctrl: {name} must be one of {valid}, got '{value}'")

    # -- features ----------------------------------------------------------------------------------
    def _layers(self, levels: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Backbone levels -> per-layer tokens ``[(B, N, C_l)]`` on the coarsest grid, embeddings ``(B, C)``."""
        side = min(level.shape[-1] for level in levels)
        tokens = []
        for level in levels:
            pooled = F.adaptive_avg_pool2d(channel_vod_grid(local_aggregate(level, self.neighbourhood),
                                                            self.vod_channel), side)
            b, c = pooled.shape[:2]
            if self.faithful_reshape:   # the public code's reshape: fine for one query, mixes queries otherwise
                tokens.append(pooled.reshape(c, side * side, b).permute(2, 1, 0).reshape(b, side * side, c)
                              if b > 1 else pooled.flatten(2).transpose(1, 2))
            else:
                tokens.append(pooled.flatten(2).transpose(1, 2))
        return tokens, levels[-1].mean(dim=(2, 3))

    def _features(self, paths: Sequence[str]):
        cache = self.feature_cache()
        return self._layers([level.to(cache.device) for level in cache.get(paths)])

    def _text_scores(self, paths: Sequence[str]) -> torch.Tensor | None:
        if not self.text_weights:
            return None
        from gadlib.modules.text_prior import shared_text_prior

        prior = shared_text_prior(self.clip_model, self.text_weights, self.feature_cache().device)
        return prior.score_paths(paths)

    @staticmethod
    def patch_residuals(query_tokens: list[torch.Tensor], reference_tokens: list[torch.Tensor],
                        shots: Sequence[int], search: str = "exact") -> dict[int, torch.Tensor]:
        """Patch residual maps ``(B, N)`` for the first k references, every k in ``shots``, one pass.

        ``query_tokens`` ``[(B, N, C_l)]``, ``reference_tokens`` ``[(K, N, C_l)]``.
        """
        b, n = query_tokens[0].shape[:2]
        per_layer = []
        for queries, refs in zip(query_tokens, reference_tokens):
            nearest = nearest_per_group(queries.reshape(b * n, -1), refs.reshape(-1, refs.shape[-1]), refs.shape[1],
                                        "cosine", search=search)
            per_layer.append(torch.cummin(nearest, dim=1).values / 2)           # (B*N, K), 1 - cos halved
        mean = torch.stack(per_layer).mean(0)
        return {k: mean[:, k - 1].reshape(b, n) for k in shots}

    def plan(self, levels: Sequence[torch.Tensor], plan) -> None:
        """For :func:`gadlib.dryrun.dry_run`: the learned heads, and one step's patch residuals."""
        from gadlib.dryrun import count

        tokens, embeddings = self._layers(levels)
        heads = InCTRLHeads(embeddings.shape[1], tokens[0].shape[1], self.hidden, bool(self.text_weights))
        plan.modules["image-residual adapter"] = count(heads.adapter)
        plan.modules["image head"] = count(heads.image_head)
        plan.modules["holistic head"] = count(heads.holistic_head)
        cells = tokens[0].shape[1]
        plan.per_step[f"patch residuals (batch x cells x {len(tokens)} layers)"] = self.batch_size * cells * len(tokens)
        plan.per_step["reference cells searched per query cell"] = self.train_shots * cells
        plan.activation_values += self.batch_size * (4 * embeddings.shape[1] + 2 * cells + 4 * self.hidden)

    # -- training ----------------------------------------------------------------------------------
    def fit(self, source) -> "InCTRL":
        """Train the heads on balanced source batches (see :meth:`SourcePool.episode`)."""
        from gadlib.training import SourcePool, fit_record, optimise

        self._check_params()
        cache = self.feature_cache()
        pool = SourcePool(source, cache, self.simulated_per_category, self.seed)
        tokens, embeddings = self._layers(pool.levels)
        torch.manual_seed(self.seed)
        self.heads_ = InCTRLHeads(embeddings.shape[1], tokens[0].shape[1], self.hidden, bool(self.text_weights))
        self.heads_.to(cache.device)
        optimizer = torch.optim.AdamW(self.heads_.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        rng = np.random.default_rng(self.seed)
        paths = pool.frame["image_path"].tolist()
        labels = torch.tensor(pool.frame["label"].to_numpy(), dtype=torch.float32)
        started = time.perf_counter()
        self.heads_.train()

        def step():
            episode = pool.episode(rng, int(rng.integers(1, self.train_shots + 1)), self.batch_size, 0.5)
            q, r = torch.from_numpy(episode.queries), torch.from_numpy(episode.references)
            k = len(r)
            patch = self.patch_residuals([t[q].to(cache.device) for t in tokens],
                                         [t[r].to(cache.device) for t in tokens], [k])[k]
            text = self._text_scores([paths[i] for i in episode.queries])
            out = self.heads_(patch, embeddings[q].to(cache.device), embeddings[r].to(cache.device), text)
            return {name: self._focal(out[name], labels[q].to(cache.device)) for name in ("final", "image")}

        history = optimise(step, optimizer, self.epochs, self.steps_per_epoch, "inctrl training", self.progress)
        self.heads_.eval()
        self.source_stats_ = self._source_stats(tokens, embeddings, paths, pool, rng, self.statistics_episodes)
        self.fit_record_ = fit_record(history, cache, pool, time.perf_counter() - started, variant=self.variant)
        return self

    @torch.inference_mode()
    def _source_stats(self, tokens, embeddings, paths, pool, rng, episodes: int = 20) -> torch.Tensor:
        """Mean and std of ``logit(s_h)`` and of ``s_p`` over the normal queries of source episodes (fixed after
        fit): ``(4,)`` = mean_h, std_h, mean_p, std_p, for ``combination="source_z"``."""
        device = self.feature_cache().device
        holistic, patch = [], []
        for _ in range(episodes):
            episode = pool.episode(rng, int(rng.integers(1, self.train_shots + 1)), self.batch_size, 0.5)
            q, r = torch.from_numpy(episode.queries), torch.from_numpy(episode.references)
            normal = torch.from_numpy(pool.frame["label"].to_numpy()[episode.queries] == 0)
            k = len(r)
            maps = self.patch_residuals([t[q].to(device) for t in tokens], [t[r].to(device) for t in tokens], [k])[k]
            out = self.heads_(maps, embeddings[q].to(device), embeddings[r].to(device),
                              self._text_scores([paths[i] for i in episode.queries]))
            holistic.append(torch.logit(out["holistic"].cpu()[normal], LOGIT_EPS))
            patch.append(out["patch"].cpu()[normal])
        holistic, patch = torch.cat(holistic).double(), torch.cat(patch).double()
        return torch.stack([holistic.mean(), holistic.std().clamp_min(1e-6), patch.mean(), patch.std().clamp_min(1e-6)])

    def combine(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        """The image score ``score`` and ``combination`` ask for, from the heads' outputs."""
        if self.score != "final":
            return out[self.score]
        if self.combination == "mean":
            return out["final"]
        if not hasattr(self, "source_stats_"):
            raise RuntimeError("inctrl: combination='source_z' needs the source statistics of a model trained "
                               "with this version (retrain it)")
        mean_h, std_h, mean_p, std_p = self.source_stats_.to(out["patch"].device, torch.float32)
        z_h = (torch.logit(out["holistic"], LOGIT_EPS) - mean_h) / std_h
        return ((z_h + (out["patch"] - mean_p) / std_p) / 2)

    def _focal(self, probability: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.faithful_double_sigmoid:   # the public code squashes the probabilities a second time
            probability = torch.sigmoid(probability)
        return focal_loss(probability, labels, self.focal_gamma)

    # -- inference ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def predict_shots(self, queries: Sequence[str], references: References, shots: Sequence[int],
                      with_pixel: bool = True) -> dict[int, Scores]:
        """Scores for the first k normal references, every k in ``shots`` (references encoded once)."""
        if not hasattr(self, "heads_"):
            raise RuntimeError("inctrl is not fitted: call fit(source), `gad train --method inctrl`, or load a checkpoint")
        self._check_params()
        shots = check_shots(references, shots)
        check_not_scored(queries, references)
        refs = list(references.normal[:shots[-1]])
        self.feature_cache().ensure(refs + list(queries))
        ref_tokens, ref_embeddings = self._features(refs)
        side = int(round(ref_tokens[0].shape[1] ** 0.5))
        image_scores: dict[int, list] = {k: [] for k in shots}
        pixel_maps: dict[int, list] = {k: [] for k in shots}
        for start in self._bar(range(0, len(queries), self.query_batch)):
            batch = queries[start:start + self.query_batch]
            tokens, embeddings = self._features(batch)
            text = self._text_scores(batch)
            for k, patch in self.patch_residuals(tokens, ref_tokens, shots, self.search).items():
                out = self.heads_(patch, embeddings, ref_embeddings[:k], text)
                image_scores[k].append(self.combine(out).cpu())
                if with_pixel:
                    pixel_maps[k].append(upsample_blur(patch.reshape(-1, side, side), self.image_size, self.sigma,
                                                              self.cell_offset(side)).cpu())
        return self.fuse_global(queries, references, shots, collect_scores(image_scores, pixel_maps, with_pixel))


    # -- persistence -------------------------------------------------------------------------------
    def load_fitted_state(self, state: dict[str, torch.Tensor], meta: dict) -> None:
        fit = meta.get("fit") or {}
        check_backbone(self, fit)
        heads = {k[len("heads_."):]: v for k, v in state.items() if k.startswith("heads_.")}
        self.heads_ = InCTRLHeads(heads["adapter.0.weight"].shape[1], heads["holistic_head.0.weight"].shape[1],
                                  self.hidden, bool(self.text_weights))
        self.heads_.load_state_dict(heads)
        self.heads_.to(self.feature_cache().device).eval()
        if "source_stats_" in state:
            self.source_stats_ = state["source_stats_"]
        self.fit_record_ = fit
