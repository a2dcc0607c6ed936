"""Parser for VisA (Visual Anomaly dataset) in its original, released layout.

Layout of the archive (``VisA_20220922.tar``)::

    <root>/<category>/Data/Images/Normal/0000.JPG
    <root>/<category>/Data/Images/Anomaly/000.JPG
    <root>/<category>/Data/Masks/Anomaly/000.png
    <root>/<category>/image_anno.csv          # image,label,mask; label = "normal" or defect text
    <root>/split_csv/1cls.csv                 # object,split,label,image,mask

The split CSV holds one row per image: ``object`` is the category, ``split`` is ``train`` or
``test``, ``label`` is ``normal`` or ``anomaly``, ``image`` and ``mask`` are paths relative to
``root`` (``mask`` is empty for normal images). In the one-class split ``1cls.csv`` the train
split is normal only (90 % of each category's normal images) and the test split holds the other
normal images plus every anomalous one.

Masks in VisA are *not* stored as 0/255: defect pixels hold small non-zero class values, so a
mask must be binarised with ``mask > 0`` (as :mod:`gadlib.data.images` does), never ``== 255``.
Defect names come from ``<category>/image_anno.csv`` when it is present (several defects are
joined with commas, as in the file); otherwise every anomalous image has defect ``"anomaly"``.
"""
from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Iterable

import pandas as pd

from gadlib.data.schema import make_frame

logger = logging.getLogger(__name__)

SPLIT_COLUMNS: tuple[str, ...] = ("object", "split", "label", "image", "mask")
CATEGORIES: tuple[str, ...] = (
    "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1",
    "macaroni2", "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum",
)
_LABELS = {"normal": 0, "anomaly": 1}
_SPLIT_ORDER = {"train": 0, "test": 1}


def _resolve_split_csv(root: Path, split_csv: str | Path | None) -> Path:
    if split_csv is None:
        path = root / "split_csv" / "1cls.csv"
    else:
        path = Path(split_csv).expanduser()
        if not path.is_absolute() and not path.exists():
            path = root / "split_csv" / path
    if not path.is_file():
        raise FileNotFoundError(
            f"VisA split file not found: {path}; expected split_csv/1cls.csv inside the VisA root "
            f"(columns {','.join(SPLIT_COLUMNS)}); pass split_csv= or re-extract the archive"
        )
    return path


def _read_defects(category_dir: Path) -> dict[str, str]:
    """Map relative image path to defect text from ``image_anno.csv`` (empty if absent)."""
    anno = category_dir / "image_anno.csv"
    if not anno.is_file():
        return {}
    with anno.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"image", "label"} <= set(reader.fieldnames):
            raise ValueError(f"{anno}: expected columns image,label,mask; found {reader.fieldnames}")
        return {_anno_key(row["image"]): row["label"].strip() for row in reader}


def _anno_key(image: str) -> str:
    """Key from ``Data/`` onwards, so ``candle/Data/...`` and ``Data/...`` spellings match."""
    image = image.strip().replace("\\", "/")
    start = image.find("Data/")
    return image[start:] if start >= 0 else image


def parse_visa(
    root: str | Path,
    split_csv: str | Path | None = None,
    categories: Iterable[str] | None = None,
    domain: str = "industrial",
) -> pd.DataFrame:
    """Parse VisA in its original layout using its split CSV.

    Args:
        root: VisA root holding ``<category>/Data/`` folders and ``split_csv/``.
        split_csv: split file; ``None`` means ``root/split_csv/1cls.csv``. A bare file name such
            as ``"1cls.csv"`` is looked up in ``root/split_csv/``.
        categories: categories to keep (``object`` column); ``None`` keeps all.
        domain: value of the ``domain`` column.

    Returns:
        DataFrame with the shared schema, sorted by category, split (train first), label and image path.
        ``frame.attrs["missing_masks"]`` lists anomalous images whose mask file is absent.

    Raises:
        FileNotFoundError: ``root``, the split CSV, or an image it names does not exist.
        ValueError: the CSV has other columns, labels or splits than VisA's, or no row is kept.
    """
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise FileNotFoundError(
            f"VisA folder not found: {root_path}; expected <category>/Data/Images/ and split_csv/; "
            f"pass the folder where VisA_20220922.tar was extracted"
        )
    csv_path = _resolve_split_csv(root_path, split_csv)
    wanted = set(categories) if categories is not None else None
    with csv_path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        header = tuple(name.strip() for name in (reader.fieldnames or ()))
        if header != SPLIT_COLUMNS:
            raise ValueError(
                f"{csv_path}: expected columns {','.join(SPLIT_COLUMNS)}, found {','.join(header)}; "
                f"use the split_csv/*.csv shipped with VisA"
            )
        records = [{k.strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    defects: dict[str, dict[str, str]] = {}
    rows: list[dict] = []
    missing_images: list[str] = []
    missing_masks: list[str] = []
    for line, rec in enumerate(records, start=2):
        category = rec["object"]
        if wanted is not None and category not in wanted:
            continue
        if rec["label"] not in _LABELS or rec["split"] not in _SPLIT_ORDER:
            raise ValueError(
                f"{csv_path}:{line}: label must be normal/anomaly and split train/test, "
                f"found label={rec['label']!r} split={rec['split']!r}"
            )
        image = Path(os.path.abspath(root_path / rec["image"]))
        if not image.is_file():
            missing_images.append(str(image))
            continue
        label = _LABELS[rec["label"]]
        mask_path = None
        defect = "good"
        if label == 1:
            if category not in defects:
                defects[category] = _read_defects(root_path / category)
            defect = defects[category].get(_anno_key(rec["image"]), "anomaly") or "anomaly"
            mask = Path(os.path.abspath(root_path / rec["mask"])) if rec["mask"] else None
            if mask is not None and mask.is_file():
                mask_path = str(mask)
            else:
                missing_masks.append(str(image))
        rows.append(
            {"image_path": str(image), "mask_path": mask_path, "label": label, "defect": defect,
             "category": category, "domain": domain, "split": rec["split"]}
        )
    if missing_images:
        raise FileNotFoundError(
            f"{len(missing_images)} image(s) listed in {csv_path} are missing, e.g. {missing_images[0]}; "
            f"re-extract the VisA archive into {root_path}"
        )
    if not rows:
        raise ValueError(f"{csv_path}: no rows for categories {sorted(wanted or [])}; known: {list(CATEGORIES)}")
    rows.sort(key=lambda r: (r["category"], _SPLIT_ORDER[r["split"]], r["label"], r["image_path"]))
    if missing_masks:
        logger.warning("%d VisA anomalous image(s) have no mask, e.g. %s", len(missing_masks), missing_masks[0])
    frame = make_frame(rows)
    frame.attrs["missing_masks"] = missing_masks
    return frame
