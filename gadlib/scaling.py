"""Is it the source or the method? The sources of the scaling study (``notebooks/40_scaling.ipynb``).

The study's trained methods lose to a training-free nearest-neighbour map on real targets. The README
blamed a small procedural source (six categories, 540 images) and a weak backbone; this module names the
sources that test that, one axis at a time, every other setting at the study's default:

* **categories**: the procedural suite's six source categories, then more, cut from real photographs
  (:mod:`gadlib.data.synth_photos`), in a fixed order (:data:`EXTRA_CATEGORIES`);
* **images** per category (normal and defective together; the default suite has 60, plus simulated ones);
* **defect families**: the six of the default suite, or ten (:data:`gadlib.data.synth.EXTRA_DEFECTS`);
* **realism**: a real dataset as the source, leaving the target's dataset out (textile + synth -> ELPV,
  ELPV + synth -> textile, ELPV mono -> poly). Real anomalies carry image labels only, no masks; every
  method here learns from anomaly masks, so a real source contributes its *normal* images (train split
  only) and the methods train on anomalies simulated on them (cut-and-paste and noise blobs, as on the
  synthetic source); the real anomalies are left out and counted;
* **backbone**: EfficientNet-Lite0 (default), Lite1, Lite2, all at 224 px;
* **training length**: the method's default episodes, and multiples of them.

A :class:`Source` is a plain description (dataset specs and filters); :func:`suite_source` generates the
suites it names into the cache on first use. No choice here looks at a target: the categories' order, the
sizes and the axes are fixed in advance, and :data:`HELD_OUT` names four photo categories that no source
contains, on which every trained model is also scored (the source-side view of the same question).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import pandas as pd

from gadlib.data.synth import ALL_DEFECTS, DEFECTS, PHOTO_CATEGORIES

DEFAULT_CATEGORIES = ("brushed_metal", "woven_fabric", "wood_grain", "tile", "washer", "bottle_top")
UNSEEN_TARGETS = ("leather", "pcb", "screw")          # the synthetic target categories: never in a source
HELD_OUT = ("coins", "lettering", "cat", "phantom")   # photo categories no source holds: the source-side check
# The photo categories a bigger source adds, in a fixed order that alternates textures and objects.
EXTRA_CATEGORIES = ("brick", "horse", "grass", "motorcycle", "gravel", "logo", "moon_surface", "cup", "tissue",
                    "camera", "fundus", "astronaut", "star_field", "print")
DEFAULT_IMAGES = 60                                   # the default suite: 20 + 10 normal, 5 x 6 defective
DEFAULT_BACKBONE = "efficientnet_lite0"
AXES = ("default", "categories", "images", "defects", "realism", "backbone", "length")


@dataclass(frozen=True)
class Source:
    """One training source of the scaling study and the method settings that go with it.

    Attributes:
        name: the row label (e.g. ``"synth: 12 categories × 60 images × 6 defect families"``).
        axis: which of :data:`AXES` it varies (``"default"`` for the study's own source).
        specs: dataset specs (:func:`gadlib.data.load.load_dataset`).
        categories: categories to keep (``None``: all).
        domains, normal_splits, defects: filters of :func:`gadlib.training.load_source`.
        backbone: the backbone every method uses with this source.
        length: training length as a multiple of the method's default epochs.
        leaves_out: the target datasets this source shares a dataset with, scored only where they do not
            overlap (``{"elpv": ["poly"]}``: of ELPV, only the poly cells count).
        axis_value: the axis' numeric value (categories, images per category, ...), for the curves.
    """

    name: str
    axis: str
    specs: tuple[str, ...] = ("synth",)
    categories: tuple[str, ...] | None = DEFAULT_CATEGORIES
    domains: tuple[str, ...] | None = None
    normal_splits: tuple[str, ...] | None = None
    defects: tuple[str, ...] | None = None
    backbone: str = DEFAULT_BACKBONE
    length: float = 1.0
    leaves_out: dict = field(default_factory=dict)
    axis_value: float | None = None

    def __post_init__(self):
        if self.axis not in AXES:
            raise ValueError(f"unknown axis {self.axis!r}; axes: {', '.join(AXES)}")
        if self.length <= 0:
            raise ValueError(f"training length must be positive, got {self.length}")
        overlap = set(self.categories or ()) & (set(UNSEEN_TARGETS) | set(HELD_OUT))
        if overlap and "synth" in {spec.split(":")[0] for spec in self.specs}:
            raise ValueError(f"{self.name}: {sorted(overlap)} are targets or held out, never in a source")

    def job(self, method: str, params: dict | None = None) -> dict:
        """Keyword arguments of :func:`gadlib.training.train_or_load` for ``method`` on this source."""
        from gadlib.methods import create_method

        params = dict(params or {})
        if self.backbone != DEFAULT_BACKBONE:
            params["backbone"] = self.backbone
        if self.length != 1.0:
            default_epochs = create_method(method, **params, progress=False).epochs
            params["epochs"] = max(1, int(round(default_epochs * self.length)))
        source = self.specs[0] if len(self.specs) == 1 else list(self.specs)
        job = dict(method=method, source=source, params=params,
                   categories=list(self.categories) if self.categories is not None else None)
        for name in ("domains", "normal_splits", "defects"):
            if getattr(self, name) is not None:
                job[name] = list(getattr(self, name))
        return job

    def describe(self) -> dict:
        """The tidy columns that name this source: datasets, categories, image count, backbone, length."""
        from gadlib.training import load_source

        frame = load_source(list(self.specs), self.categories, self.defects, self.normal_splits, self.domains)
        usable = frame[(frame["label"] == 0) | frame["mask_path"].notna()]
        datasets = "+".join(spec.split(":")[0] for spec in self.specs)
        return dict(source=self.name, axis=self.axis, axis_value=self.axis_value, source_datasets=datasets,
                    source_categories=int(frame["category"].nunique()), source_images=len(usable),
                    source_real_anomalies_left_out=int(len(frame) - len(usable)),
                    source_defects=int(usable.loc[usable["label"] == 1, "defect"].nunique()),
                    backbone=self.backbone, length=self.length)


def suite_counts(images: int, n_defects: int) -> dict:
    """``generate_suite`` counts for ``images`` per category: half normal (2 : 1 train : test), half defective."""
    if images < 6 or images % 2:
        raise ValueError(f"images per category must be an even number >= 6, got {images}")
    per_defect = max(1, round(images / 2 / n_defects))
    normal = images - per_defect * n_defects
    if normal < 3:
        raise ValueError(f"{images} images per category leave {normal} normal ones next to {n_defects} defect "
                         "families; training needs 2 normal training images and a test one")
    return dict(n_train=normal - normal // 3, n_test_normal=normal // 3, n_test_per_defect=per_defect)


def suite_source(categories: int = 6, images: int = DEFAULT_IMAGES, defects: Sequence[str] = DEFECTS,
                 axis: str = "categories", root: str | Path | None = None, size: int = 128, seed: int = 0) -> Source:
    """A synthetic source of ``categories`` categories x ``images`` images with ``defects``.

    The default (6 x 60, six families) is the study's own source, spec ``"synth"``, so its checkpoints are
    shared with the other notebooks. Any other is generated (once) into ``<cache>/synth/scaling-...``: the
    default six categories first, then :data:`EXTRA_CATEGORIES` in order. An image is determined by
    (seed, category, split, defect, index), so a bigger suite holds the smaller one's images.
    """
    from gadlib.cache import default_cache_dir
    from gadlib.data.synth import generate_suite

    pool = DEFAULT_CATEGORIES + EXTRA_CATEGORIES
    if not 1 <= categories <= len(pool):
        raise ValueError(f"categories must be 1..{len(pool)}, got {categories}")
    defects = tuple(defects)
    unknown = sorted(set(defects) - set(ALL_DEFECTS))
    if unknown:
        raise ValueError(f"unknown defect families {unknown}; known: {', '.join(ALL_DEFECTS)}")
    names = pool[:categories]
    axis_value = {"categories": categories, "images": images, "defects": len(defects)}.get(axis)
    label = f"synth: {categories} categories × {images} images × {len(defects)} defect families"
    if categories == 6 and images == DEFAULT_IMAGES and defects == DEFECTS and seed == 0 and size == 128:
        return Source("synth (the study's source)", "default", ("synth",), names, axis_value=axis_value)
    counts = suite_counts(images, len(defects))
    folder = Path(root or default_cache_dir() / "synth") / (
        f"scaling-{categories}c-{images}i-{len(defects)}d-{size}px-seed{seed}")
    generate_suite(folder, categories=list(names), defects=list(defects), size=size, seed=seed, **counts)
    return Source(label, axis, (f"synth:{folder}",), names, axis_value=axis_value)


def held_out_suite(root: str | Path | None = None, size: int = 128, seed: int = 0) -> str:
    """The spec of the suite of :data:`HELD_OUT` categories (default counts and defects), generated once."""
    from gadlib.cache import default_cache_dir
    from gadlib.data.synth import generate_suite

    folder = Path(root or default_cache_dir() / "synth") / f"scaling-held-out-{size}px-seed{seed}"
    generate_suite(folder, categories=list(HELD_OUT), size=size, seed=seed)
    return f"synth:{folder}"


def real_sources() -> list[Source]:
    """Real datasets as sources, each leaving its own dataset out of the targets (see the module doc).

    A source dataset's images are never scored: its target rows are dropped (:func:`keep_scored`), or, for
    ELPV's two cell types, only the other type's rows are kept.
    """
    return [
        Source("textile + synth", "realism", ("textile", "synth"), categories=("textile",) + DEFAULT_CATEGORIES,
               leaves_out={"textile": []}),
        Source("ELPV + synth", "realism", ("elpv", "synth"), categories=("elpv",) + DEFAULT_CATEGORIES,
               leaves_out={"elpv": []}),
        Source("ELPV mono", "realism", ("elpv",), categories=None, domains=("mono",), leaves_out={"elpv": ["poly"]}),
        Source("ELPV poly", "realism", ("elpv",), categories=None, domains=("poly",), leaves_out={"elpv": ["mono"]}),
    ]


def with_backbone(source: Source, backbone: str) -> Source:
    """The same source with another backbone (the backbone axis)."""
    return replace(source, name=f"{source.name} · {backbone}", axis="backbone", backbone=backbone,
                   axis_value=None)


def with_length(source: Source, length: float) -> Source:
    """The same source trained ``length`` times as long (the training-length axis)."""
    return replace(source, name=f"{source.name} · {length:g}× training", axis="length", length=length,
                   axis_value=length)


def keep_scored(tidy: pd.DataFrame, source: Source) -> pd.DataFrame:
    """The rows of ``tidy`` a model trained on ``source`` may report: a target dataset the source shares is
    dropped, or kept only in the domains ``source.leaves_out`` names (its whole-dataset row is dropped too)."""
    keep = pd.Series(True, index=tidy.index)
    for dataset, domains in source.leaves_out.items():
        mine = tidy["dataset"] == dataset
        keep &= ~mine | tidy["domain"].isin(list(domains))
    return tidy[keep]


DEFAULT_AXIS_VALUES = dict(categories=6, images=DEFAULT_IMAGES, defects=len(DEFECTS), length=1.0)


def along_axes(tidy: pd.DataFrame, defaults: dict | None = None) -> pd.DataFrame:
    """``tidy`` with the default source's rows (``axis == "default"``) repeated on every other axis, at its
    value there (``defaults``, e.g. ``{"categories": 6}``; :data:`DEFAULT_AXIS_VALUES` when ``None``), so that
    each axis' curve starts from the study's own source."""
    defaults = DEFAULT_AXIS_VALUES if defaults is None else defaults
    default = tidy[tidy["axis"] == "default"]
    parts = [default.assign(axis=axis, axis_value=defaults.get(axis)) for axis in AXES[1:]]
    return pd.concat(parts + [tidy[tidy["axis"] != "default"]], ignore_index=True)


def verdict(tidy: pd.DataFrame, bar: pd.DataFrame, keys: Sequence[str] = ("dataset", "domain", "shots"),
            metric: str = "image_auroc") -> pd.DataFrame:
    """Per trained method and target: the default source's mean ``metric``, the bar's on the same draws, the
    source that helped most, and the smallest source (fewest usable images) whose mean passes the bar.

    Args:
        tidy: tidy rows of trained models, with ``method``, ``source``, ``axis``, ``source_images``,
            ``metric``, ``value`` and ``keys`` columns (the default source has ``axis == "default"``).
        bar: the best training-free baseline's tidy rows on the same draws.
    Returns:
        One row per (method, target): ``default``, ``bar``, ``best_source``, ``best``, ``gain`` (best -
        default), ``smallest_passing`` (missing where no source passes the bar) and ``its_images``.
    """
    keys = list(keys)
    bar_mean = bar[bar["metric"] == metric].groupby(keys)["value"].mean().rename("bar")
    mine = tidy[tidy["metric"] == metric]
    means = mine.groupby(["method", "source"] + keys, dropna=False).agg(
        value=("value", "mean"), kind=("axis", "first"), images=("source_images", "first")).reset_index()
    means = means.join(bar_mean, on=keys).dropna(subset=["bar"])
    rows = []
    for (method, *target), group in means.groupby(["method"] + keys, dropna=False, sort=False):
        default = group.loc[group["kind"] == "default", "value"]
        best = group.loc[group["value"].idxmax()]
        winners = group[group["value"] > group["bar"]].sort_values(["images", "source"])
        rows.append(dict(method=method, **dict(zip(keys, target)),
                         default=default.iloc[0] if len(default) else None, bar=group["bar"].iloc[0],
                         best_source=best["source"], best=best["value"],
                         gain=best["value"] - default.iloc[0] if len(default) else None,
                         smallest_passing=winners["source"].iloc[0] if len(winners) else None,
                         its_images=winners["images"].iloc[0] if len(winners) else None))
    return pd.DataFrame(rows)


def label_target(tidy: pd.DataFrame, label: str) -> pd.DataFrame:
    """``tidy`` of one target with a ``target`` column: ``label`` on its whole-dataset rows, ``label domain``
    on the rows of each of its domains when it has several (ELPV: ``ELPV``, ``ELPV mono``, ``ELPV poly``)."""
    domains = tidy["domain"].astype(str)
    several = domains.nunique() > 1
    views = [label if not several or "+" in domain else f"{label} {domain}" for domain in domains]
    return tidy.assign(target=views)


def source_table(sources: Sequence[Source]) -> pd.DataFrame:
    """One row per source: what it holds (:meth:`Source.describe`)."""
    return pd.DataFrame([source.describe() for source in sources])


__all__ = ["AXES", "DEFAULT_CATEGORIES", "EXTRA_CATEGORIES", "HELD_OUT", "Source", "along_axes", "held_out_suite",
           "keep_scored", "label_target", "real_sources", "source_table", "suite_counts", "suite_source", "verdict",
           "with_backbone", "with_length"]
