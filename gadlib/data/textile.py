"""Simulated textile images shipped by the PyPI package ``conformal-clip-data``.

1,000 nominal and 1,000 defective images (500 ``local`` and 500 ``global`` defects), image labels
only. There is no published split, so we use the ELPV rule: the nominal images (sorted by name) are
split 75/25 with ``random_state=42`` into a reference pool (``split="train"``) and normal test
queries; every defective image is a test query. One category (``"textile"``).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from gadlib.data.schema import make_frame

SPLIT_SEED = 42
TEST_FRACTION = 0.25
DEFECT_FOLDERS = ("local", "global")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def textile_root() -> Path:
    """Folder with ``nominal/``, ``local/`` and ``global/`` of the installed package."""
    try:
        import conformal_clip_data
    except ImportError as err:  # pragma: no cover - the package is a hard dependency
        raise ImportError("The textile set needs 'conformal-clip-data': pip install conformal-clip-data") from err
    return Path(conformal_clip_data.textile_simulated_root())


def _images(folder: Path) -> list[str]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: textile folder not found; reinstall 'conformal-clip-data'")
    base = folder.resolve()          # once, not per file
    files = sorted(str(base / p.name) for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{folder}: empty textile folder; expected {sorted(IMAGE_SUFFIXES)} images")
    return files


def parse_textile(root: str | Path | None = None) -> pd.DataFrame:
    """Return the textile table (see the module docstring).

    Args:
        root: folder with ``nominal/``, ``local/``, ``global/``; defaults to the package's copy.
    """
    root = Path(root) if root is not None else textile_root()
    nominal = _images(root / "nominal")
    pool, normal_test = train_test_split(nominal, test_size=TEST_FRACTION, random_state=SPLIT_SEED)
    base = dict(mask_path=None, category="textile", domain="textile")
    rows = [dict(base, image_path=p, label=0, defect="good", split="train") for p in pool]
    rows += [dict(base, image_path=p, label=0, defect="good", split="test") for p in normal_test]
    for defect in DEFECT_FOLDERS:
        rows += [dict(base, image_path=p, label=1, defect=defect, split="test") for p in _images(root / defect)]
    frame = make_frame(rows)
    return frame.sort_values(["split", "image_path"]).reset_index(drop=True)
