"""The study's one result store: every evaluation cell is computed once and reused by every notebook.

A *cell* is one method scored on one category of one target with one seeded reference draw, for every
k at once (the references are nested across k). Its address is a digest of everything that determines
its numbers:

* the method: its name, its hyper-parameters (those that only change speed or printing are left out),
  the digest of its learned tensors (so a retrained checkpoint is a new cell) and its backbone key
  (model, weights digest, levels, image size);
* the draw: every episode (reference and query paths, seed, abnormal-reference source), the queries'
  labels, domains, defect types and mask paths, and the bytes of every image and mask involved; for a
  method that never reads abnormal references (``Method.reads_abnormal_references``) they are left out,
  so its cells are shared by episodes that differ only in those (m = 0 and m simulated references);
* the code: a digest of the library files that compute features, train, score and measure
  (:func:`code_digest`), of the methods' files only the shared ones and the method's own
  (:func:`method_code`), plus the torch and timm versions.

Cells live under ``<cache>/results`` (``$GADLIB_CACHE``, see :func:`gadlib.cache.default_cache_dir`) as
one gzipped JSON file each, written atomically, so a killed study keeps every finished cell and a
re-run computes only the missing ones. Trained checkpoints are keyed the same way
(:func:`gadlib.training.checkpoint_path` uses :func:`code_digest` of the training code).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

PACKAGE_ROOT = Path(__file__).resolve().parent
# What training reads: features, data, simulation, kernels, modules, methods and the training loop.
TRAINING_CODE = ("training.py", "gaps.py", "backbones.py", "cache.py", "data", "kernels", "modules", "methods")
# What an evaluation cell reads on top of that: episodes and scoring loop, metrics.
EVALUATION_CODE = TRAINING_CODE + ("study.py", "metrics.py")
# Of the methods, every method reads these; each method's own module is added by :func:`method_code`, so an
# edit of one method's file re-keys that method's cells and checkpoints only.
SHARED_METHOD_CODE = ("methods/__init__.py", "methods/base.py", "methods/features.py")
# Hyper-parameters that change how fast or how loudly a method runs, never its numbers.
NOT_IN_KEY = ("progress", "device", "cache_dir", "query_batch")


@lru_cache(maxsize=None)
def code_digest(parts: tuple[str, ...] = EVALUATION_CODE) -> str:
    """SHA-256 (16 hex digits) of the library files under ``parts`` and the torch / timm versions.

    Replaces a hand-bumped version number: any edit of code that can change a result changes the key.
    """
    digest = hashlib.sha256()
    for part in parts:
        path = PACKAGE_ROOT / part
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            digest.update(str(file.relative_to(PACKAGE_ROOT)).encode())
            digest.update(file.read_bytes())
    for package in ("torch", "timm"):
        try:
            digest.update(f"{package}={metadata.version(package)}".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{package}=none".encode())
    return digest.hexdigest()[:16]


def method_code(method_class: type, parts: tuple[str, ...] = EVALUATION_CODE) -> tuple[str, ...]:
    """``parts`` with the ``methods`` folder narrowed to the shared method files and ``method_class``'s module.

    A method defined outside the package keeps the whole folder (and its own file is not digested).
    """
    import inspect

    try:
        own = Path(inspect.getfile(method_class)).resolve().relative_to(PACKAGE_ROOT).as_posix()
    except ValueError:
        return parts
    narrowed: list[str] = []
    for part in parts:
        narrowed.extend((*SHARED_METHOD_CODE, own) if part == "methods" else (part,))
    return tuple(dict.fromkeys(narrowed))


def tensors_digest(tensors: dict) -> str:
    """SHA-256 (16 hex digits) of named tensors' names, shapes, dtypes and bytes."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        value = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(value.shape)}:{value.dtype}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def method_identity(method) -> dict:
    """What a method contributes to a cell's key (see the module docstring)."""
    params = {k: v for k, v in sorted(method.get_params().items()) if k not in NOT_IN_KEY}
    identity = dict(name=method.name, params=json.loads(json.dumps(params, default=str)),
                    state=tensors_digest(method.fitted_state()), code=code_digest(method_code(type(method))),
                    reads_abnormal=bool(getattr(method, "reads_abnormal_references", True)))
    cache = getattr(method, "feature_cache", None)
    if cache is not None:
        identity["backbone"] = cache().backbone.key()
    return identity


def files_digest(paths) -> str:
    """One digest of the bytes of every file in ``paths`` (``None`` entries are skipped)."""
    from gadlib.cache import image_digest

    digest = hashlib.sha256()
    for path in sorted({str(p) for p in paths if p is not None and not (isinstance(p, float) and p != p)}):
        digest.update(f"{path}={image_digest(path)};".encode())
    return digest.hexdigest()[:16]


def cell_key(identity: dict, dataset: str, episodes: list, queries: pd.DataFrame, with_pixel: bool) -> str:
    """The address of one cell: method identity, episodes (all k), query metadata, file bytes, code."""
    from dataclasses import fields

    # Shallow records (dataclasses.asdict deep-copies every query list: half the time of a warm run's keys)
    records = [{f.name: getattr(ep, f.name) for f in fields(ep)} for ep in episodes]
    if not identity.get("reads_abnormal"):     # m = 0 or m simulated references: the same numbers
        for record in records:
            for name in ("abnormal_refs", "abnormal_masks", "abnormal_source", "notes"):
                record.pop(name)
    meta = queries[["label", "domain", "defect", "mask_path"]].astype(str).to_numpy().tolist()
    files = [p for ep in episodes for p in ep.normal_refs]
    if identity.get("reads_abnormal"):
        files += [p for ep in episodes for p in ep.abnormal_refs + list(ep.abnormal_masks)]
    files += queries.index.tolist() + queries["mask_path"].tolist()
    config = dict(code=identity.get("code") or code_digest(), method=identity, dataset=dataset, episodes=records, queries=meta,
                  files=files_digest(files), with_pixel=bool(with_pixel))
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:24]


class ResultStore:
    """Cells on disk: ``get`` (a found cell counts as reused) and ``put`` (counts as computed).

    Args:
        root: folder of the cells; default ``<cache>/results``.

    ``computed`` and ``reused`` count this process's cells; every computed key is also appended to
    ``<root>/computed.log`` (one line per cell), which tells a test which cells a run computed.
    """

    def __init__(self, root: str | Path | None = None):
        from gadlib.cache import default_cache_dir

        self.root = Path(root) if root is not None else default_cache_dir() / "results"
        self.computed = 0
        self.reused = 0

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json.gz"

    def get(self, key: str) -> dict | None:
        path = self.path(key)
        if not path.is_file():
            return None
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            payload = json.load(handle)
        self.reused += 1
        return payload

    def put(self, key: str, payload: dict) -> None:
        """Write a cell atomically (a temporary sibling, then a rename)."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_name(f".{key}.{os.getpid()}.tmp")
        with gzip.open(scratch, "wt", encoding="utf-8") as handle:
            json.dump(payload, handle)
        os.replace(scratch, path)
        with open(self.root / "computed.log", "a", encoding="utf-8") as log:
            log.write(key + "\n")
        self.computed += 1


def array_digest(*arrays) -> str:
    """SHA-256 (16 hex digits) of arrays' shapes, dtypes and bytes (numpy or torch)."""
    digest = hashlib.sha256()
    for array in arrays:
        value = array.detach().cpu().numpy() if torch.is_tensor(array) else np.ascontiguousarray(array)
        digest.update(f"{value.shape}:{value.dtype}".encode())
        digest.update(value.tobytes() if value.dtype != object else json.dumps(value.tolist(), default=str).encode())
    return digest.hexdigest()[:16]


def memoized(name: str, config: dict, compute: Callable[[], Any], code: tuple[str, ...] = EVALUATION_CODE) -> Any:
    """A derived result that is not an evaluation cell (a patch sample, an embedding, a table), computed once.

    Kept as a gzipped pickle under ``<cache>/derived``, addressed by ``name``, ``config`` (JSON-ready: what
    determines the result, digests of its inputs included) and :func:`code_digest` of ``code``; a found
    one counts as a reused cell in the study's progress, a computed one as a computed cell.
    """
    import gzip as _gzip
    import pickle
    import time

    from gadlib.cache import default_cache_dir
    from gadlib.progress import report

    key = hashlib.sha256(json.dumps(dict(name=name, config=config, code=code_digest(tuple(code))),
                                    sort_keys=True, default=str).encode()).hexdigest()[:24]
    path = default_cache_dir() / "derived" / key[:2] / f"{name}-{key}.pkl.gz"
    started = time.perf_counter()
    if path.is_file():
        with _gzip.open(path, "rb") as handle:
            value = pickle.load(handle)
        report("cell", name, time.perf_counter() - started, reused=True)
        return value
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with _gzip.open(scratch, "wb", compresslevel=3) as handle:
        pickle.dump(value, handle, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(scratch, path)
    report("cell", name, time.perf_counter() - started, reused=False)
    return value


def frame_payload(frame: pd.DataFrame) -> dict:
    """A DataFrame as JSON-ready columns (exact floats: JSON keeps float64 round trips)."""
    return {column: frame[column].tolist() for column in frame.columns}


def payload_frame(columns: dict, order: list[str] | None = None) -> pd.DataFrame:
    frame = pd.DataFrame(columns)
    return frame[order] if order else frame


_DEFAULT: dict[str, ResultStore] = {}


def default_store() -> ResultStore:
    """The process's store under the current cache folder (follows ``$GADLIB_CACHE``)."""
    from gadlib.cache import default_cache_dir

    root = str(default_cache_dir() / "results")
    if root not in _DEFAULT:
        _DEFAULT[root] = ResultStore(root)
    return _DEFAULT[root]
