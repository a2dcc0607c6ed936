"""Content-addressed on-disk feature cache.

A feature file's address is ``sha256(backbone key)`` / ``sha1(image bytes)``: the backbone key holds
the model name, the weights digest, the levels, the image size and the normalisation, so any change
of those, or of the image's bytes, misses the cache; renaming or moving a file does not. Files are
written atomically (temporary file + rename), so an interrupted run never leaves a half-written entry.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from gadlib.backbones import Backbone
from gadlib.data.images import ImageDataset
from gadlib.progress import report


def default_cache_dir() -> Path:
    """``$GADLIB_CACHE``, else ``~/.cache/gadlib``."""
    return Path(os.environ.get("GADLIB_CACHE", Path.home() / ".cache" / "gadlib"))


def atomic_save_file(tensors: dict[str, torch.Tensor], target: Path) -> None:
    """Write a safetensors file via a temporary sibling and a rename, so readers never see half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    save_file(tensors, str(tmp))
    os.replace(tmp, target)


_DIGESTS: dict[tuple[str, int, int], str] = {}


def image_digest(path: str | Path) -> str:
    """SHA-1 of a file's bytes, memoised on (path, size, mtime)."""
    stat = os.stat(path)
    memo_key = (str(path), stat.st_size, stat.st_mtime_ns)
    if memo_key not in _DIGESTS:
        with open(path, "rb") as handle:
            _DIGESTS[memo_key] = hashlib.sha1(handle.read()).hexdigest()
    return _DIGESTS[memo_key]


def default_device() -> torch.device:
    """CUDA when a GPU is present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class FeatureCache:
    """Backbone features of image files, computed once and reused across runs.

    Args:
        backbone: the frozen feature extractor.
        root: cache folder; defaults to :func:`default_cache_dir`.
        batch_size: images per forward pass when features are missing.
        device: where the backbone runs; defaults to CUDA if available.
        progress: show a tqdm bar while extracting.
        dtype: storage precision (float16 halves the disk use; features return as float32).
    """

    def __init__(self, backbone: Backbone, root: str | Path | None = None, batch_size: int = 32,
                 device: str | torch.device | None = None, progress: bool = True,
                 dtype: torch.dtype = torch.float16):
        self.backbone = backbone
        self.device = torch.device(device) if device is not None else default_device()
        self.backbone.to(self.device)
        self.batch_size = batch_size
        self.progress = progress
        self.dtype = dtype
        key = backbone.key() + f";dtype={dtype}"
        if backbone.layout == torch.channels_last:     # the same features up to rounding: kept apart
            key += ";channels_last"
        self.folder = Path(root or default_cache_dir()) / "features" / hashlib.sha256(key.encode()).hexdigest()[:16]
        self.folder.mkdir(parents=True, exist_ok=True)
        config_file = self.folder / "config.json"
        if not config_file.exists():
            config_file.write_text(json.dumps({"backbone_key": key}, indent=1))
        self.hits = 0
        self.misses = 0

    def _entry(self, digest: str) -> Path:
        return self.folder / digest[:2] / f"{digest}.safetensors"

    def _extract(self, paths: Sequence[str], digests: Sequence[str]) -> None:
        dataset = ImageDataset(pd.DataFrame({"image_path": list(paths)}), self.backbone.preprocess, with_masks=False)
        loader = torch.utils.data.DataLoader(dataset, batch_size=self.batch_size, shuffle=False)
        bar = tqdm(total=len(paths), desc=f"features {self.backbone.name}", unit="img",
                   disable=not self.progress, leave=False)
        for batch in loader:
            levels = self.backbone(batch["image"].to(self.device))
            finite = torch.stack([torch.isfinite(level).flatten(1).all(1) for level in levels]).all(0).tolist()
            for i, index in enumerate(batch["index"].tolist()):
                if not finite[i]:
                    bar.close()   # nothing of this image is stored; earlier images' entries are complete
                    raise ValueError(f"{paths[index]}: the backbone gave NaN or infinite features for this image; "
                                     "check the backbone weights file (--backbone-weights) and the image, then "
                                     "run again (nothing was cached for it)")
                tensors = {f"level{j}": level[i].to(self.dtype).cpu().contiguous() for j, level in enumerate(levels)}
                atomic_save_file(tensors, self._entry(digests[index]))
            bar.update(len(batch["index"]))
        bar.close()

    def ensure(self, paths: Sequence[str]) -> list[str]:
        """Extract (with one progress bar) whatever of ``paths`` is not cached yet; return the digests.

        ``misses`` counts images extracted; ``hits`` counts images :meth:`get` served without extracting.
        """
        paths = [str(p) for p in paths]
        digests = [image_digest(p) for p in paths]
        todo = self._todo(paths, digests)
        self.misses += len(todo)
        if todo:
            started = time.perf_counter()
            self._extract(list(todo.values()), list(todo.keys()))
            report("features", f"{self.backbone.name} features", time.perf_counter() - started, count=len(todo))
        return digests

    def missing(self, paths: Sequence[str]) -> list[str]:
        """The paths whose features are not cached yet, one per distinct image (by content), in order."""
        paths = [str(p) for p in paths]
        return list(self._todo(paths, [image_digest(p) for p in paths]).values())

    def _todo(self, paths: list[str], digests: list[str]) -> dict[str, str]:
        """Digest -> first path, of the images not cached yet, in order."""
        todo: dict[str, str] = {}
        for path, digest in zip(paths, digests):
            if digest not in todo and not self._entry(digest).exists():
                todo[digest] = path
        return todo

    def get(self, paths: Sequence[str]) -> list[torch.Tensor]:
        """Features of ``paths`` as one ``(N, C_l, h_l, w_l)`` float32 tensor per level (on the CPU)."""
        if len(paths) == 0:
            raise ValueError("FeatureCache.get: no image paths given")
        misses = self.misses
        stored = [load_file(str(self._entry(d))) for d in self.ensure(paths)]
        self.hits += len(paths) - (self.misses - misses)
        return [torch.stack([s[f"level{j}"] for s in stored]).float() for j in range(len(stored[0]))]


_SHARED: dict[tuple, FeatureCache] = {}


def shared_cache(name: str, levels: Sequence[int] | None = None, image_size: int = 224,
                 weights: str | None = None, root: str | Path | None = None,
                 device: str | None = None, progress: bool = True) -> FeatureCache:
    """One FeatureCache (and one loaded backbone) per configuration in this process."""
    key = (name, tuple(levels) if levels else None, image_size, weights, str(root or default_cache_dir()), device)
    if key not in _SHARED:
        backbone = Backbone(name, levels=levels, image_size=image_size, weights=weights)
        _SHARED[key] = FeatureCache(backbone, root=root, device=device, progress=progress)
        _SHARED[key].spec = (name, levels, image_size, weights, root, device)   # how a worker makes the same one
    _SHARED[key].progress = progress
    return _SHARED[key]


def ensure_on_pool(requests: Sequence[tuple[FeatureCache, Sequence[str]]], workers: int | None = None) -> None:
    """Extract the missing features of several caches' images at once, shared out over the worker pool.

    Each cache's missing images (one per distinct content) are dealt round-robin to the workers
    (:func:`gadlib.parallel.layout`), so no image is extracted twice; one thread per core extracts more images
    per second than two threads on one batch (Lite0 on this CPU: 46 ms an image on one thread, 32 on two).
    Without a pool, or for a cache not made by :func:`shared_cache`, this process extracts them.
    """
    from gadlib.parallel import layout, starmap

    n_workers, _ = layout(workers)
    jobs = []
    for cache, paths in requests:
        todo = cache.missing(paths)
        if n_workers < 2 or len(todo) < 2 or getattr(cache, "spec", None) is None:
            cache.ensure(todo)
        else:
            jobs += [(cache.spec, todo[i::n_workers]) for i in range(n_workers)]
    starmap(_ensure_remote, jobs, workers)


def _ensure_remote(spec: tuple, paths: list[str]) -> None:
    shared_cache(*spec, progress=False).ensure(paths)
