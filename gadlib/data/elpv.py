"""ELPV solar cells (electroluminescence), shipped by the PyPI package ``elpv-dataset``.

InCTRL's protocol, implemented exactly:

* defect probability 0 -> normal; the normal images (sorted by file name) are split 75/25 with
  ``sklearn.model_selection.train_test_split(random_state=42)``: the 75 % are the reference pool
  (``split="train"``), the 25 % are normal test queries;
* probability 1 -> anomalous, all in the test split (mono and poly);
* probabilities 1/3 and 2/3 are dropped (ambiguous grading).

One category (``"elpv"``); the cell type is kept as the domain (``"mono"`` / ``"poly"``), so a
domain-gap split (references from one type, queries from the other) needs no new parser.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from gadlib.data.schema import make_frame

SPLIT_SEED = 42
TEST_FRACTION = 0.25


def elpv_root() -> Path:
    """Folder holding ``labels.csv`` and ``images/`` of the installed ``elpv-dataset`` package."""
    try:
        import elpv_dataset
    except ImportError as err:  # pragma: no cover - the package is a hard dependency
        raise ImportError("ELPV needs the PyPI package 'elpv-dataset': pip install elpv-dataset") from err
    return Path(elpv_dataset.__file__).parent / "data"


def read_labels(root: Path | None = None) -> pd.DataFrame:
    """Read ``labels.csv`` into columns ``image_path``, ``probability``, ``domain``."""
    root = Path(root) if root is not None else elpv_root()
    labels_file = root / "labels.csv"
    if not labels_file.is_file():
        raise FileNotFoundError(f"{labels_file}: ELPV labels file not found; reinstall 'elpv-dataset'")
    table = pd.read_csv(labels_file, sep=r"\s+", header=None, names=["path", "probability", "domain"])
    base = root.resolve()            # once: resolving each of the 2,624 paths took a third of a second per parse
    table["image_path"] = [str(base / p) for p in table["path"]]
    return table[["image_path", "probability", "domain"]]


def parse_elpv(root: str | Path | None = None) -> pd.DataFrame:
    """Return the ELPV table in InCTRL's protocol (see the module docstring).

    Args:
        root: folder with ``labels.csv`` and ``images/``; defaults to the installed package's copy.
    """
    table = read_labels(Path(root) if root is not None else None)
    is_normal = np.isclose(table["probability"], 0.0)
    is_anomalous = np.isclose(table["probability"], 1.0)
    normals = table[is_normal].sort_values("image_path").reset_index(drop=True)
    pool, normal_test = train_test_split(normals, test_size=TEST_FRACTION, random_state=SPLIT_SEED)
    rows = []
    for part, split in ((pool, "train"), (normal_test, "test")):
        for rec in part.itertuples():
            rows.append(dict(image_path=rec.image_path, mask_path=None, label=0, defect="good",
                             category="elpv", domain=rec.domain, split=split))
    for rec in table[is_anomalous].itertuples():
        rows.append(dict(image_path=rec.image_path, mask_path=None, label=1, defect="defective",
                         category="elpv", domain=rec.domain, split="test"))
    frame = make_frame(rows)
    return frame.sort_values(["split", "image_path"]).reset_index(drop=True)
