"""Few-shot episodes: k normal + m abnormal reference images and the queries they guide.

Rules (DESIGN.md, protocol): draws are seeded and recorded; for one seed the normal references are
nested across k (the first k of one seeded permutation, so 1 in 2 in 4 in 8); references are never
scored as queries. Abnormal references are either real (drawn from the category's anomalous test
images, which then leave the query set) or simulated by cut-and-paste on normal pool images; both
are drawn by their own seeded stream, so they are the same for every k.
"""
from __future__ import annotations

import json
import os
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

ABNORMAL_SOURCES = ("real", "simulated")


@dataclass
class Episode:
    """One evaluation unit: which references guide which queries, and how they were drawn."""

    target: str                      # "<dataset>/<category>"
    normal_refs: list[str]           # image paths
    abnormal_refs: list[str]         # image paths (real, or simulated files)
    abnormal_masks: list[str | None]
    queries: list[str]               # image paths scored with these references
    seed: int
    abnormal_source: str = "real"
    notes: dict = field(default_factory=dict)

    @property
    def shots(self) -> int:
        return len(self.normal_refs)

    @property
    def abnormal_shots(self) -> int:
        return len(self.abnormal_refs)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Episode":
        return cls(**json.loads(text))


def episode_rng(seed: int, target: str) -> np.random.Generator:
    """A generator fixed by (seed, target), independent of Python's hash randomisation."""
    return np.random.default_rng([seed, zlib.crc32(target.encode())])


def sample_episode(frame: pd.DataFrame, category: str, shots: int, seed: int, abnormal_shots: int = 0,
                   abnormal_source: str = "real", dataset: str = "dataset",
                   simulated_dir: str | Path | None = None) -> Episode:
    """Draw the references of one category and return the episode with its queries.

    Args:
        frame: schema table of the dataset.
        category: which category to draw from.
        shots: k, normal references taken from the category's normal ``train`` images.
        seed: draw seed; the same seed gives nested references for every k.
        abnormal_shots: m, abnormal references.
        abnormal_source: ``"real"`` (from the anomalous test images, removed from the queries) or
            ``"simulated"`` (cut-and-paste on normal pool images, written to ``simulated_dir``).
        dataset: dataset name, recorded in ``Episode.target``.
        simulated_dir: where simulated abnormal references are written; default
            ``<feature cache>/simulated`` (deterministic files, so recorded paths stay valid).
    """
    if shots < 1 or abnormal_shots < 0:
        raise ValueError(f"shots must be >= 1 and abnormal_shots >= 0, got {shots} and {abnormal_shots}")
    if abnormal_source not in ABNORMAL_SOURCES:
        raise ValueError(f"abnormal_source must be one of {ABNORMAL_SOURCES}, got '{abnormal_source}'")
    rows = frame[frame["category"] == category]
    if rows.empty:
        known = sorted(frame["category"].unique())
        raise ValueError(f"{dataset}: no category '{category}'; known categories: {known}")
    target = f"{dataset}/{category}"
    pool = rows[(rows["split"] == "train") & (rows["label"] == 0)]["image_path"].sort_values().tolist()
    if shots > len(pool):
        raise ValueError(f"{target}: k={shots} normal references asked for, but the reference pool "
                         f"(normal 'train' images) holds only {len(pool)}; use --shots <= {len(pool)}")
    rng = episode_rng(seed, target)
    normal_refs = [pool[i] for i in rng.permutation(len(pool))[:shots]]
    test = rows[rows["split"] == "test"].sort_values("image_path")
    abnormal_refs: list[str] = []
    abnormal_masks: list[str | None] = []
    if abnormal_shots and abnormal_source == "real":
        anomalous = test[test["label"] == 1]
        if abnormal_shots > len(anomalous):
            raise ValueError(f"{target}: m={abnormal_shots} abnormal references asked for, but only "
                             f"{len(anomalous)} anomalous images exist")
        # A separate stream, so that adding abnormal references never changes the normal ones.
        picks = episode_rng(seed + 1_000_003, target).permutation(len(anomalous))[:abnormal_shots]
        abnormal_refs = anomalous["image_path"].iloc[picks].tolist()
        abnormal_masks = anomalous["mask_path"].iloc[picks].tolist()
    elif abnormal_shots:
        if simulated_dir is None:
            from gadlib.cache import default_cache_dir

            simulated_dir = default_cache_dir() / "simulated"
        # Sources come from the pool by their own stream, so the simulated references are the same for every k.
        order = episode_rng(seed + 3_000_017, target).permutation(len(pool))
        sources = [pool[order[i % len(pool)]] for i in range(abnormal_shots)]
        abnormal_refs, abnormal_masks = simulate_references(sources, seed, target, Path(simulated_dir))
    notes = {"simulated_from": sources} if abnormal_shots and abnormal_source == "simulated" else {}
    used = set(normal_refs) | set(abnormal_refs)
    queries = [p for p in test["image_path"] if p not in used]
    if not queries:
        raise ValueError(f"{target}: no test images left to score after removing the references")
    return Episode(target=target, normal_refs=normal_refs, abnormal_refs=abnormal_refs,
                   abnormal_masks=abnormal_masks, queries=queries, seed=seed, abnormal_source=abnormal_source,
                   notes=notes)


def simulate_references(sources: list[str], seed: int, target: str, out_dir: Path) -> tuple[list[str], list[str]]:
    """One cut-and-paste anomaly on each source image, saved as PNG image + mask."""
    from PIL import Image

    from gadlib.data.images import load_rgb
    from gadlib.data.simulate import cut_paste

    rng = episode_rng(seed + 2_000_003, target)
    out_dir.mkdir(parents=True, exist_ok=True)
    images, masks = [], []
    for i, source in enumerate(sources):
        image, mask = cut_paste(load_rgb(source), rng)
        stem = f"{zlib.crc32(f'{target}|{source}|{seed}|{i}'.encode()):08x}"
        image_file, mask_file = out_dir / f"{stem}.png", out_dir / f"{stem}_mask.png"
        if not (image_file.is_file() and mask_file.is_file()):   # deterministic: a re-run writes nothing
            for array, file in ((mask * 255, mask_file), (image, image_file)):
                scratch = file.with_name(f".{file.stem}.tmp{os.getpid()}.png")
                Image.fromarray(array).save(scratch)
                os.replace(scratch, file)     # an interrupted run never leaves half a PNG behind
        images.append(str(image_file))
        masks.append(str(mask_file))
    return images, masks
