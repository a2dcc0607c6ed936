"""Source-domain training data for the trained methods, and checkpoints reused across runs.

* :func:`load_source` turns dataset specs (``"synth"``, ``"textile"``, ...) and a category list into
  one schema table; categories of different datasets are prefixed so they never merge.
* :class:`SourcePool` holds the backbone features of every source image in memory -- normal images,
  real anomalies with masks, and anomalies simulated on normal images -- and draws training episodes:
  k random normal references of one category plus a batch of queries of the same category that
  never includes a reference.
* :func:`train_or_load` fits a method once per configuration and keeps the checkpoint in the cache,
  so a second ``make study`` reuses it; the epoch count is fixed in advance (the last epoch is kept).
  The configuration's key holds a digest of the training code itself (:func:`gadlib.store.code_digest`),
  so an edit of that code retrains instead of silently reusing a stale checkpoint.
* :func:`train_all` trains the missing checkpoints of several configurations in a process pool
  (:mod:`gadlib.parallel`), then loads them all.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from gadlib.cache import FeatureCache, default_cache_dir
from gadlib.kernels.coverage import cell_coverage
from gadlib.progress import report
from gadlib.store import TRAINING_CODE, code_digest, method_code

SIMULATORS = ("cut_paste", "noise_blob")
# Torch threads while a model trains, whatever the process's layout: CPU float reductions split over another
# number of threads round differently, and training amplifies that (InCTRL measured 1.5-3 image-AUROC points
# apart when trained with 2 threads instead of 1), so a checkpoint would depend on which notebook, alone or
# beside another training, made it. Pool workers train with 1 thread anyway; a lone training now does too.
TRAINING_THREADS = 1


def load_source(specs: str | Sequence[str], categories: Sequence[str] | None = None,
                defects: Sequence[str] | None = None, normal_splits: Sequence[str] | None = None,
                domains: Sequence[str] | None = None) -> pd.DataFrame:
    """The source domain as one schema table.

    Args:
        specs: dataset spec(s) (see :func:`gadlib.data.load.load_dataset`), e.g. ``"synth"``.
        categories: keep only these categories (names as in the datasets); ``None`` keeps all.
        defects: keep only anomalies of these defect types (:func:`gadlib.gaps.keep_defects`).
        normal_splits: keep only normal images of these splits (:func:`gadlib.gaps.normal_splits`).
        domains: keep only images of these domains (e.g. ELPV's ``["mono"]``: train on one cell type, test
            on the other); ``None`` keeps all.
    """
    from gadlib import gaps
    from gadlib.data.load import load_dataset

    specs = [specs] if isinstance(specs, str) else list(specs)
    if not specs:
        raise ValueError("the source needs at least one dataset spec, e.g. --source synth")
    frames = []
    for spec in specs:
        name, frame = load_dataset(spec)
        if categories is not None:
            frame = frame[frame["category"].isin(list(categories))]
        if domains is not None:
            frame = frame[frame["domain"].astype(str).isin(list(domains))]
        frame = gaps.normal_splits(gaps.keep_defects(frame, defects), normal_splits)
        if len(specs) > 1:
            frame = frame.assign(category=name + "/" + frame["category"])
        frames.append(frame)
    source = pd.concat(frames, ignore_index=True)
    if source.empty:
        known = sorted(set().union(*(set(load_dataset(s)[1]["category"]) for s in specs)))
        raise ValueError(f"source {specs} has no images in categories {list(categories or [])}"
                         f"{f' and domains {list(domains)}' if domains is not None else ''}; known: {known}")
    return source


def _simulate_anomalies(normal: pd.DataFrame, per_category: int, seed: int, out_dir: Path) -> pd.DataFrame:
    """Simulated anomalies (alternating cut-and-paste / noise blob) on normal source images, as PNG + mask."""
    from PIL import Image

    from gadlib.data.images import load_rgb
    from gadlib.data.simulate import simulate

    rows = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for category, group in normal.groupby("category", sort=True):
        paths = sorted(group["image_path"])
        plan = []
        for i in range(per_category):
            source = paths[i % len(paths)]
            stem = f"{zlib.crc32(f'{category}|{source}|{seed}|{i}'.encode()):08x}"
            plan.append((source, SIMULATORS[i % len(SIMULATORS)], out_dir / f"{stem}.png", out_dir / f"{stem}_mask.png"))
        # The category's generator runs through all its anomalies in order: made once, they are only read again.
        if not all(image_file.is_file() and mask_file.is_file() for _, _, image_file, mask_file in plan):
            rng = np.random.default_rng([seed, zlib.crc32(str(category).encode())])
            for source, kind, image_file, mask_file in plan:
                image, mask = simulate(load_rgb(source), kind, rng)
                if not (image_file.is_file() and mask_file.is_file()):
                    for array, target in ((mask * 255, mask_file), (image, image_file)):
                        scratch = target.with_name(f".{target.stem}.tmp{os.getpid()}.png")
                        Image.fromarray(array).save(scratch)
                        os.replace(scratch, target)  # an interrupted run never leaves half a PNG behind
        rows += [dict(image_path=str(image_file), mask_path=str(mask_file), label=1, defect=f"simulated_{kind}",
                      category=category, domain=group["domain"].iloc[0], split="simulated", source_path=source)
                 for source, kind, image_file, mask_file in plan]
    return pd.DataFrame(rows)


@dataclass
class TrainingEpisode:
    """A training episode: indices into the pool of the references and of the queries."""

    category: str
    references: np.ndarray
    queries: np.ndarray


def pool_frame(source: pd.DataFrame, simulated_per_category: int = 30, seed: int = 0) -> tuple[pd.DataFrame, int]:
    """The images a :class:`SourcePool` of ``source`` holds, and how many anomalies it leaves out.

    Normal images, anomalies with a mask, and ``simulated_per_category`` anomalies simulated on each category's
    normal images (written once under ``<cache>/source_simulated``); anomalies without a mask are left out
    (counted).
    """
    normal = source[source["label"] == 0]
    anomalous = source[(source["label"] == 1) & source["mask_path"].notna()]
    dropped = int(((source["label"] == 1) & source["mask_path"].isna()).sum())
    parts = [normal, anomalous]
    if simulated_per_category:
        digest = hashlib.sha256("|".join(sorted(normal["image_path"])).encode()).hexdigest()[:16]
        parts.append(_simulate_anomalies(normal, simulated_per_category, seed,
                                         default_cache_dir() / "source_simulated" / digest))
    return pd.concat(parts, ignore_index=True), dropped


class SourcePool:
    """Features and per-level anomaly fractions of every source image, and an episode sampler.

    Args:
        source: schema table of the source domain (all splits are used: it is not a target).
        cache: feature cache of the method's backbone.
        simulated_per_category: anomalies simulated on normal images of each category.
        seed: seed of the simulation.
    """

    def __init__(self, source: pd.DataFrame, cache: FeatureCache, simulated_per_category: int = 30, seed: int = 0):
        self.frame, self.dropped_without_mask = pool_frame(source, simulated_per_category, seed)
        self.categories = sorted(self.frame["category"].unique())
        paths = self.frame["image_path"].tolist()
        self.levels = cache.get(paths)                       # [(N, C_l, H_l, W_l)] float32
        size = cache.backbone.preprocess.image_size
        from gadlib.data.images import load_masks

        self.backbone = cache.backbone
        self.masks = torch.from_numpy(load_masks(self.frame["mask_path"].tolist(), paths, size)).bool()
        # Share of each feature cell's window covered by the anomaly mask, per level, the windows centred
        # on the cells' receptive fields (gadlib.kernels.coverage).
        self.abnormal_fraction = [cell_coverage(self.masks, tuple(level.shape[-2:]), offset)
                                  for level, offset in zip(self.levels, self.backbone.level_offsets())]
        # The source image each pool image was made from (itself, or the normal image an anomaly was simulated
        # on): an episode never queries an image that shares one with its references.
        origin = self.frame["image_path"].astype(str)
        if "source_path" in self.frame:
            origin = self.frame["source_path"].fillna(origin).astype(str)
        self.origin = pd.factorize(origin)[0]
        labels = self.frame["label"].to_numpy()
        categories = self.frame["category"].to_numpy()
        self.normal_of = {c: np.flatnonzero((categories == c) & (labels == 0)) for c in self.categories}
        self.abnormal_of = {c: np.flatnonzero((categories == c) & (labels == 1)) for c in self.categories}
        defects = self.frame["defect"].astype(str).to_numpy()
        self.abnormal_by_defect = {c: {d: np.flatnonzero((categories == c) & (labels == 1) & (defects == d))
                                       for d in sorted(set(defects[self.abnormal_of[c]]))} for c in self.categories}
        for category, index in self.normal_of.items():
            if len(index) < 2:
                raise ValueError(f"source category '{category}' has {len(index)} normal image(s); "
                                 "training episodes need at least 2 (a reference and a query)")

    def __len__(self) -> int:
        return len(self.frame)

    def cell_coverage(self, side: tuple[int, int]) -> torch.Tensor:
        """``(I, H*W)``: the share of each cell of an ``H x W`` grid of aligned levels covered by each image's
        mask, the windows centred where the grid's cells look (:meth:`gadlib.backbones.Backbone.grid_offset`)."""
        return cell_coverage(self.masks, tuple(side), self.backbone.grid_offset(side[-1])).flatten(1)

    def episode(self, rng: np.random.Generator, shots: int, batch_size: int,
                anomaly_fraction: float = 0.5) -> "TrainingEpisode":
        """k normal references of a random category and ``batch_size`` queries of the same category.

        Queries are drawn without replacement and never share a source image with a reference (a normal
        query is not a reference; an anomaly was not simulated on one); about ``anomaly_fraction`` of them
        are anomalous (real or simulated) when the category has any.
        """
        category = self.categories[rng.integers(len(self.categories))]
        normal = rng.permutation(self.normal_of[category])
        shots = min(shots, len(normal) - 1)
        references, candidates = normal[:shots], normal[shots:]
        abnormal = self._not_made_from(self.abnormal_of[category], references)
        n_abnormal = min(len(abnormal), int(round(batch_size * anomaly_fraction)))
        n_normal = min(len(candidates), batch_size - n_abnormal)
        queries = np.concatenate([candidates[:n_normal], rng.choice(abnormal, n_abnormal, replace=False)])
        return TrainingEpisode(category, references, queries.astype(np.int64))


    def guided_episode(self, rng: np.random.Generator, shots: int, abnormal_shots: int,
                       anomaly_fraction: float = 0.5) -> "GuidedEpisode":
        """NAGL's episode: k normal and m abnormal references of one defect type, and one query.

        The category is drawn among those with a defect type of at least ``m + 1`` images (``m`` is
        lowered to what the largest defect type allows; 0 is allowed); the query
        is, with probability ``anomaly_fraction``, another anomaly of that type, else a normal image; it
        never shares a source image with a reference, normal or abnormal (when every anomaly left of the
        type does, the query is a normal image).
        """
        largest = max((len(index) for types in self.abnormal_by_defect.values() for index in types.values()), default=0)
        if largest < 2:
            raise ValueError("no source category has a defect type with 2 anomalies (an abnormal reference + a "
                             "query); add anomalies with masks or simulated ones (simulated_per_category)")
        abnormal_shots = min(abnormal_shots, largest - 1)   # small sources: as many as one defect type allows
        usable = [c for c in self.categories
                  if any(len(index) > abnormal_shots for index in self.abnormal_by_defect[c].values())]
        category = usable[rng.integers(len(usable))]
        types = [d for d, index in self.abnormal_by_defect[category].items() if len(index) > abnormal_shots]
        abnormal = rng.permutation(self.abnormal_by_defect[category][types[rng.integers(len(types))]])
        normal = rng.permutation(self.normal_of[category])
        shots = min(shots, len(normal) - 1)
        references, abnormal_refs = normal[:shots], abnormal[:abnormal_shots]
        taken = np.concatenate([references, abnormal_refs])
        label = int(rng.random() < anomaly_fraction)
        queries = self._not_made_from(abnormal[abnormal_shots:], taken)
        if not label or not len(queries):
            label, queries = 0, self._not_made_from(normal[shots:], taken)
        if not len(queries):
            raise ValueError(f"source category '{category}': every image left shares a source image with the "
                             "episode's references; add normal images or lower the shots")
        return GuidedEpisode(category, references, abnormal_refs, int(queries[0]), label)

    def _not_made_from(self, candidates: np.ndarray, references: np.ndarray) -> np.ndarray:
        """The candidates (in order) that share no source image with any of ``references``."""
        return candidates[~np.isin(self.origin[candidates], self.origin[references])]


@dataclass
class GuidedEpisode:
    """A normal-and-abnormal guided training episode (indices into the pool) and its query's label."""

    category: str
    references: np.ndarray
    abnormal_refs: np.ndarray
    query: int
    label: int


def _jsonable_params(params: dict) -> dict:
    skip = {"progress", "device", "cache_dir", "query_batch", "search"}   # search: inference only
    # VOD settings came after the first checkpoints: "none" is what those were trained with, so it is
    # left out of the key and they stay valid.
    return {k: v for k, v in sorted(params.items())
            if k not in skip and not (k.startswith("vod_") and v == "none")}


def checkpoint_path(method: str, params: dict, source: str | Sequence[str], categories: Sequence[str] | None,
                    backbone_key: str, root: str | Path | None = None, defects: Sequence[str] | None = None,
                    normal_splits: Sequence[str] | None = None, domains: Sequence[str] | None = None) -> Path:
    """Where the checkpoint of this exact configuration lives in the cache (without suffix)."""
    if not isinstance(source, str):  # ["synth"] and "synth" are the same source
        source = source[0] if len(source) == 1 else list(source)
    from gadlib.methods.base import method_class

    config = dict(method=method, params=_jsonable_params(params), source=source,
                  categories=sorted(categories) if categories is not None else None,
                  backbone=backbone_key, code=code_digest(method_code(method_class(method), TRAINING_CODE)))
    for name, value in (("defects", defects), ("normal_splits", normal_splits), ("domains", domains)):
        if value is not None:       # absent from the keys of sources without the filter
            config[name] = sorted(value)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(root or default_cache_dir()) / "checkpoints" / f"{method}-{digest}"


def train_or_load(method: str, source: str | Sequence[str], categories: Sequence[str] | None = None,
                  params: dict | None = None, progress: bool = True, out: str | Path | None = None,
                  defects: Sequence[str] | None = None, normal_splits: Sequence[str] | None = None,
                  domains: Sequence[str] | None = None):
    """Fit ``method`` on the source, or load the checkpoint of the same configuration from the cache.

    Returns ``(fitted method, checkpoint path)``. ``out`` additionally copies the checkpoint there.
    ``defects`` / ``normal_splits`` / ``domains`` restrict the source (see :func:`load_source`).
    """
    from gadlib.methods import create_method
    from gadlib.methods.base import Method

    params = dict(params or {})
    model = create_method(method, **params, progress=progress)
    key = model.feature_cache().backbone.key()
    path = checkpoint_path(method, model.get_params(), source, categories, key, defects=defects,
                           normal_splits=normal_splits, domains=domains)
    label = f"{method} on {source if isinstance(source, str) else '+'.join(source)}" + (
        f" {dict(sorted(_jsonable_params(params).items()))}" if _jsonable_params(params) else "")
    started = time.perf_counter()
    if path.with_suffix(".json").is_file() and path.with_suffix(".safetensors").is_file():
        model = Method.load(path, progress=progress)
        report("train", label, time.perf_counter() - started, reused=True)
    else:
        frame = load_source(source, categories, defects, normal_splits, domains)
        with torch_threads(TRAINING_THREADS):
            model.fit(frame)
        model.save(path)
        report("train", label, time.perf_counter() - started, reused=False)
    if out is not None:
        model.save(out)
    return model, path


class torch_threads:
    """Context: ``torch.set_num_threads(n)`` inside, the previous count restored on the way out."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self) -> None:
        self.previous = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc) -> None:
        torch.set_num_threads(self.previous)


def _train_remote(job: dict) -> str:
    """Pool task: train (or find) one configuration's checkpoint; returns its path."""
    return str(train_or_load(**job, progress=False)[1])


def train_all(jobs: Sequence[dict], progress: bool = True, workers: int | None = None) -> list:
    """:func:`train_or_load` for several configurations; the missing ones are trained in a pool.

    Args:
        jobs: keyword arguments of :func:`train_or_load` (``method``, ``source``, ``categories``,
            ``params``, ``defects``, ``normal_splits``, ``domains``), one dict per configuration.
        workers: processes (:func:`gadlib.parallel.layout`); 1 trains one after another here.
    Returns:
        ``(fitted method, checkpoint path)`` per job, in order.
    """
    from gadlib.parallel import layout, pool, submit

    n_workers, threads = layout(workers)
    if n_workers > 1:
        from gadlib.methods import create_method

        missing = []                      # (job, its untrained model)
        for job in jobs:
            model = create_method(job["method"], **dict(job.get("params") or {}), progress=False)
            path = checkpoint_path(job["method"], model.get_params(), job["source"], job.get("categories"),
                                   model.feature_cache().backbone.key(), defects=job.get("defects"),
                                   normal_splits=job.get("normal_splits"), domains=job.get("domains"))
            if not path.with_suffix(".safetensors").is_file():
                missing.append((job, model))
        if len(missing) > 1:
            _prepare_sources(missing, n_workers)
            # Longest first: the pool's last tasks are then short, and no worker waits long for the other.
            missing.sort(key=lambda pair: -pair[1].training_seconds)
            bar = tqdm(total=len(missing), desc="training", unit="model", disable=not progress)
            executor = pool(n_workers, threads)
            for future in [submit(executor, _train_remote, job) for job, _ in missing]:
                future.result()
                bar.update()
            bar.close()
    return [train_or_load(**job, progress=progress) for job in jobs]


def _prepare_sources(missing: Sequence[tuple[dict, object]], n_workers: int) -> None:
    """Every image the trainings of ``missing`` (job, untrained model) read, made before they start, each once
    and on the pool: the simulated anomalies of each distinct source (one task each), then the features of all
    their images (:func:`gadlib.cache.ensure_on_pool`). Two trainings must not make the same image twice, and a
    training then only reads."""
    from gadlib.cache import ensure_on_pool
    from gadlib.parallel import starmap

    sources: dict[str, tuple] = {}
    caches: dict[str, tuple] = {}
    for job, model in missing:
        simulated, seed = getattr(model, "simulated_per_category", 0), getattr(model, "seed", 0)
        key = json.dumps([job["source"], job.get("categories"), job.get("defects"), job.get("normal_splits"),
                          job.get("domains"), simulated, seed], default=str)
        sources.setdefault(key, (job, simulated, seed))
        cache = model.feature_cache()
        caches.setdefault(str(cache.folder), (cache, set()))[1].add(key)
    images = dict(zip(sources, starmap(_source_images, sources.values(), n_workers)))
    ensure_on_pool([(cache, [path for key in sorted(keys) for path in images[key]]) for cache, keys in caches.values()],
                   n_workers)


def _source_images(job: dict, simulated: int, seed: int) -> list[str]:
    """Pool task: the image paths of one source's pool (its simulated anomalies made here)."""
    frame = load_source(job["source"], job.get("categories"), job.get("defects"), job.get("normal_splits"),
                        job.get("domains"))
    return pool_frame(frame, simulated, seed)[0]["image_path"].astype(str).tolist()


def optimise(step, optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int, desc: str, progress: bool,
             scheduler=None) -> list[dict]:
    """Run a training schedule fixed in advance and return its curve.

    ``step()`` draws an episode and returns named loss tensors; their sum is minimised. Returns one
    dict per epoch: ``epoch`` and the mean of each loss over the epoch's steps.
    """
    history, sums = [], {}
    for epoch, index, bar in iterate_epochs(epochs, steps_per_epoch, desc, progress):
        losses = step()
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        for name, value in losses.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach())
        if index == steps_per_epoch - 1:
            history.append(dict(epoch=epoch + 1, **{k: v / steps_per_epoch for k, v in sums.items()}))
            bar.set_postfix(loss=f"{sum(history[-1][k] for k in sums):.3f}")
            sums = {}
    return history


def fit_record(history: list[dict], cache: FeatureCache, pool: SourcePool, seconds: float, **extra) -> dict:
    """What a checkpoint records about its training besides tensors (kept in its JSON)."""
    return dict(history=history, backbone_key=cache.backbone.key(), source_images=len(pool),
                train_seconds=round(seconds, 1), source_categories=pool.categories,
                source_dropped_without_mask=pool.dropped_without_mask, **extra)


def iterate_epochs(epochs: int, steps_per_epoch: int, desc: str, progress: bool):
    """``(epoch, step)`` pairs with one progress bar over all steps."""
    bar = tqdm(total=epochs * steps_per_epoch, desc=desc, unit="step", disable=not progress)
    for epoch in range(epochs):
        for step in range(steps_per_epoch):
            yield epoch, step, bar
            bar.update(1)
    bar.close()
