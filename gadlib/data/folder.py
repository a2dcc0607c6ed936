"""Parser for MVTec-style anomaly-detection folders and their common variants.

One function, :func:`parse_folder`, reads every dataset that keeps *normal* and *anomalous*
images in named sub-folders of ``train/`` and ``test/``. Each category folder is read with one
of three image layouts, detected automatically or forced with ``layout``:

``"mvtec"`` (MVTec AD, MPDD, BTAD, VisA after ``prepare_data.py``, plain custom folders)::

    <category>/train/good/000.png
    <category>/test/<good | defect>/000.png
    <category>/ground_truth/<defect>/000_mask.png      # MVTec AD, MPDD
    <category>/ground_truth/<defect>/000.png           # BTAD (ok/ko), converted VisA (good/bad)

``"mvtec3d"`` (MVTec 3D-AD, RGB only; ``xyz/`` point clouds are ignored)::

    <category>/train/good/rgb/000.png
    <category>/test/<defect>/rgb/000.png
    <category>/test/<defect>/gt/000.png

``"bmad"`` (BMAD medical benchmark, e.g. ``Brain`` = BraTS2021 slices)::

    <category>/train/good/img/00003_60.png
    <category>/test/good/img/00000_96.png
    <category>/test/Ungood/img/00002_60.png
    <category>/test/Ungood/label/00002_60.png

Validation folders (``valid/`` in BMAD, ``validation/`` in MVTec 3D-AD) are dropped by default
so that the test split matches the published benchmark; ``valid_split="train"`` adds their
*normal* images to the reference pool, ``valid_split="test"`` adds all of them to the test split.

Normal images live in folders named ``good``, ``ok`` (BTAD) or ``normal``; every other folder
name is kept verbatim as the defect type (``ko`` in BTAD, ``Ungood`` in BMAD, ``bad`` in converted
VisA). Anomalous images whose mask is missing in a dataset that has masks keep
``mask_path=None``; their paths are listed in ``frame.attrs["missing_masks"]`` and logged.
Paths are made absolute without resolving symbolic links, so linked dataset views keep their names.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from gadlib.data.schema import make_frame

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
NORMAL_NAMES: tuple[str, ...] = ("good", "ok", "normal")
LAYOUTS: tuple[str, ...] = ("auto", "mvtec", "btad", "mvtec3d", "bmad")
VALID_SPLITS: tuple[str, ...] = ("drop", "train", "test")
_VALID_DIRS: tuple[str, ...] = ("valid", "validation")
# image sub-folder and mask sub-folder inside a class folder, per layout
_SUBDIRS: dict[str, tuple[str | None, str | None]] = {
    "mvtec": (None, None),
    "mvtec3d": ("rgb", "gt"),
    "bmad": ("img", "label"),
}


def is_image(path: Path) -> bool:
    """True for a visible file with an image suffix (case-insensitive)."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES


def list_images(folder: Path) -> list[Path]:
    """Images directly inside ``folder``, sorted by name; ``[]`` if the folder does not exist.

    Two images with the same name but for the suffix (``000.png`` and ``000.PNG``/``000.jpg``) are an
    error: their masks would be matched by name, ambiguously.
    """
    if not folder.is_dir():
        return []
    images = sorted((p for p in folder.iterdir() if is_image(p)), key=lambda p: p.name)
    seen: dict[str, Path] = {}
    for image in images:
        other = seen.setdefault(image.stem.lower(), image)
        if other is not image:
            raise ValueError(f"{folder}: '{other.name}' and '{image.name}' have the same name; masks and "
                             "references are matched by name, so keep one of them (or rename the other)")
    return images


def _subdirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _is_category_dir(folder: Path) -> bool:
    return (folder / "train").is_dir() or (folder / "test").is_dir()


def _mask_index(folder: Path) -> dict[str, Path]:
    """Map image stems to mask files in ``folder``; ``<stem>_mask.*`` wins over ``<stem>.*``."""
    index: dict[str, Path] = {}
    plain: dict[str, Path] = {}
    for mask in list_images(folder):
        if mask.stem.endswith("_mask"):
            index.setdefault(mask.stem[: -len("_mask")], mask)
        else:
            plain.setdefault(mask.stem, mask)
    return {**plain, **index}


def _detect_layout(category_dir: Path) -> str:
    """Guess the layout from the first class folder that holds an ``rgb/`` or ``img/`` folder."""
    for split_name in ("train", "test", *_VALID_DIRS):
        for class_dir in _subdirs(category_dir / split_name):
            if (class_dir / "rgb").is_dir():
                return "mvtec3d"
            if (class_dir / "img").is_dir():
                return "bmad"
    return "mvtec"


def _class_rows(
    class_dir: Path,
    *,
    layout: str,
    split: str,
    category: str,
    domain: str,
    normal_names: Sequence[str],
    gt_dir: Path,
    missing: list[str],
) -> list[dict]:
    """Rows for one ``<split>/<class>`` folder, with masks paired by file stem."""
    image_sub, mask_sub = _SUBDIRS[layout]
    image_dir = class_dir / image_sub if image_sub else class_dir
    if image_sub and not image_dir.is_dir():
        raise ValueError(
            f"{class_dir}: expected a '{image_sub}/' folder for layout '{layout}'; "
            f"pass layout='auto' or fix the folder structure"
        )
    is_normal = class_dir.name.lower() in {n.lower() for n in normal_names}
    if is_normal:
        masks: dict[str, Path] = {}
        has_masks = False
    elif mask_sub:
        masks = _mask_index(class_dir / mask_sub)
        has_masks = (class_dir / mask_sub).is_dir()
    else:
        masks = _mask_index(gt_dir / class_dir.name)
        has_masks = gt_dir.is_dir()
    rows = []
    for image in list_images(image_dir):
        mask = None if is_normal else masks.get(image.stem)
        if not is_normal and mask is None and has_masks:
            missing.append(os.path.abspath(image))
        rows.append(
            {
                "image_path": os.path.abspath(image),
                "mask_path": os.path.abspath(mask) if mask is not None else None,
                "label": 0 if is_normal else 1,
                "defect": "good" if is_normal else class_dir.name,
                "category": category,
                "domain": domain,
                "split": split,
            }
        )
    return rows


def _class_order(class_dir: Path, normal_names: Sequence[str]) -> tuple[int, str]:
    # normal folders first, then defects alphabetically
    return (0 if class_dir.name.lower() in {n.lower() for n in normal_names} else 1, class_dir.name)


def parse_category(
    category_dir: str | Path,
    *,
    category: str | None = None,
    domain: str = "industrial",
    layout: str = "auto",
    valid_split: str = "drop",
    normal_names: Sequence[str] = NORMAL_NAMES,
    missing_masks: list[str] | None = None,
) -> list[dict]:
    """Rows of one category folder (``train/``, ``test/`` and optional ``ground_truth/``).

    Args:
        category_dir: folder holding ``train/`` and/or ``test/``.
        category: category name; defaults to the folder name.
        domain: value of the ``domain`` column.
        layout: one of :data:`LAYOUTS`; ``"auto"`` detects it from the folder.
        valid_split: what to do with ``valid/``/``validation/``: ``"drop"``, ``"train"`` or ``"test"``.
        normal_names: class-folder names that hold normal images (case-insensitive).
        missing_masks: list that receives anomalous images lacking a mask (appended in place).

    Raises:
        ValueError: for an unknown layout, or when the folder holds no images at all.
    """
    category_dir = Path(category_dir)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r} for {category_dir}; use one of {list(LAYOUTS)}")
    if valid_split not in VALID_SPLITS:
        raise ValueError(f"unknown valid_split {valid_split!r}; use one of {list(VALID_SPLITS)}")
    resolved = _detect_layout(category_dir) if layout == "auto" else layout
    resolved = "mvtec" if resolved == "btad" else resolved
    name = category or category_dir.name
    missing = missing_masks if missing_masks is not None else []
    sources: list[tuple[Path, str, bool]] = [(category_dir / "train", "train", False)]
    sources.append((category_dir / "test", "test", False))
    if valid_split != "drop":
        for valid_name in _VALID_DIRS:
            sources.append((category_dir / valid_name, valid_split, valid_split == "train"))
    rows: list[dict] = []
    for split_dir, split, normals_only in sources:
        for class_dir in sorted(_subdirs(split_dir), key=lambda d: _class_order(d, normal_names)):
            if class_dir.name == "ground_truth":
                continue
            class_rows = _class_rows(
                class_dir, layout=resolved, split=split, category=name, domain=domain,
                normal_names=normal_names, gt_dir=category_dir / "ground_truth", missing=missing,
            )
            rows.extend(r for r in class_rows if not (normals_only and r["label"] == 1))
    rows.sort(key=lambda r: r["split"] != "train")  # stable: train rows first, order kept
    if not rows:
        raise ValueError(
            f"empty category folder {category_dir}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) "
            f"found under train/<class>/ or test/<class>/ (layout '{resolved}'); "
            f"check that the archive was fully extracted"
        )
    return rows


def find_categories(root: str | Path) -> list[Path]:
    """Category folders under ``root``: folders that contain ``train/`` or ``test/``, sorted."""
    return [d for d in _subdirs(Path(root)) if _is_category_dir(d)]


def parse_folder(
    root: str | Path,
    domain: str = "industrial",
    categories: Iterable[str] | None = None,
    *,
    layout: str = "auto",
    valid_split: str = "drop",
    normal_names: Sequence[str] = NORMAL_NAMES,
    category: str | None = None,
) -> pd.DataFrame:
    """Parse an MVTec-style dataset folder into the shared table.

    ``root`` is either a dataset folder with one sub-folder per category, or a single category
    folder (``root/train`` and/or ``root/test`` exist), whose category is the folder name unless
    ``category`` is given. Rows are sorted by category, split (train, then test), class folder
    (normal first) and file name.

    Args:
        root: dataset or single-category folder.
        domain: value of the ``domain`` column, e.g. ``"industrial"`` or ``"brain_mri"``.
        categories: categories to read; ``None`` reads every category folder found.
        layout: ``"auto"``, ``"mvtec"``, ``"btad"`` (same as mvtec), ``"mvtec3d"`` or ``"bmad"``.
        valid_split: ``"drop"`` (default), ``"train"`` (normal validation images join the
            reference pool) or ``"test"`` (all validation images join the test split).
        normal_names: class-folder names holding normal images.
        category: name for a single-category root (default: the folder name).

    Returns:
        DataFrame with :data:`gadlib.data.schema.COLUMNS`; ``frame.attrs["missing_masks"]`` lists
        anomalous images that have no mask although their category ships masks.

    Raises:
        FileNotFoundError: ``root`` or a requested category folder does not exist.
        ValueError: no category folder under ``root``, or a category folder holds no images.
    """
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise FileNotFoundError(
            f"dataset folder not found: {root_path}; expected a folder with <category>/train/good/ "
            f"and <category>/test/; pass the path where the dataset was extracted"
        )
    kwargs = dict(domain=domain, layout=layout, valid_split=valid_split, normal_names=normal_names)
    missing: list[str] = []
    rows: list[dict] = []
    if _is_category_dir(root_path):
        rows = parse_category(root_path, category=category, missing_masks=missing, **kwargs)
    else:
        if categories is None:
            category_dirs = find_categories(root_path)
            if not category_dirs:
                raise ValueError(
                    f"no category folders under {root_path}: expected <category>/train/ or "
                    f"<category>/test/ (MVTec layout); check the path points at the extracted dataset"
                )
        else:
            category_dirs = []
            for name in sorted(categories):
                folder = root_path / name
                if not folder.is_dir():
                    raise FileNotFoundError(
                        f"category folder not found: {folder}; expected {folder}/train/good/ and "
                        f"{folder}/test/; check the category name or re-extract the dataset"
                    )
                category_dirs.append(folder)
        for folder in category_dirs:
            rows.extend(parse_category(folder, missing_masks=missing, **kwargs))
    if missing:
        logger.warning(
            "%d anomalous image(s) under %s have no mask, e.g. %s", len(missing), root_path, missing[0]
        )
    frame = make_frame(rows)
    frame.attrs["missing_masks"] = missing
    return frame
