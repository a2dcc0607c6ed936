"""The one table every dataset parser returns.

Every parser in :mod:`gadlib.data` is a pure function from a folder (or a package) to a
``pandas.DataFrame`` with exactly these columns, one row per image:

==========  =====================================================================
image_path  absolute path of the image file (str)
mask_path   absolute path of its pixel mask, or ``None`` (normal image / no masks)
label       0 = normal, 1 = anomalous (int)
defect      defect type; ``"good"`` for normal images (str)
category    object or texture class inside the dataset, e.g. ``"bottle"`` (str)
domain      acquisition domain, e.g. ``"industrial"``, ``"mono"``, ``"brain_mri"`` (str)
split       ``"train"`` (normal reference pool / source training) or ``"test"`` (str)
==========  =====================================================================
"""
from __future__ import annotations

import pandas as pd

COLUMNS: tuple[str, ...] = ("image_path", "mask_path", "label", "defect", "category", "domain", "split")
SPLITS: frozenset[str] = frozenset({"train", "test"})


def make_frame(rows: list[dict]) -> pd.DataFrame:
    """Build a schema-conforming DataFrame from row dicts (missing ``mask_path`` becomes ``None``)."""
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame["mask_path"] = frame["mask_path"].astype(object).where(frame["mask_path"].notna(), None)
    frame["label"] = frame["label"].astype(int)
    return validate_frame(frame)


def validate_frame(frame: pd.DataFrame, source: str = "dataset") -> pd.DataFrame:
    """Check that ``frame`` follows the schema; return it unchanged or raise ``ValueError``.

    Args:
        frame: a parser's output.
        source: what produced it (a path or dataset name), used in error messages.
    """
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{source}: table lacks columns {missing}; parsers must return {list(COLUMNS)}")
    if frame.empty:
        raise ValueError(f"{source}: no images found; check the path and the dataset layout")
    bad_labels = set(frame["label"].unique()) - {0, 1}
    if bad_labels:
        raise ValueError(f"{source}: labels must be 0 (normal) or 1 (anomalous), found {sorted(bad_labels)}")
    bad_splits = set(frame["split"].unique()) - SPLITS
    if bad_splits:
        raise ValueError(f"{source}: split must be one of {sorted(SPLITS)}, found {sorted(bad_splits)}")
    if frame["image_path"].duplicated().any():
        dup = frame.loc[frame["image_path"].duplicated(), "image_path"].iloc[0]
        raise ValueError(f"{source}: image listed twice: {dup}")
    return frame
