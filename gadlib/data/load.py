"""One entry point from a dataset name (or folder) to its schema table.

Accepted specs:

* ``"elpv"``, ``"textile"``: shipped by PyPI packages, no path needed;
* ``"synth"``: the procedural suite, generated once into the cache folder (``synth:PATH`` to choose);
* ``"<manifest>:PATH"``, e.g. ``"mvtec_ad:/data/mvtec"``: any dataset with a manifest;
* ``"folder:PATH"`` or a bare existing folder: any MVTec-layout folder, no manifest needed.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from gadlib.data import manifests
from gadlib.data.schema import validate_frame


def split_spec(spec: str) -> tuple[str, str | None]:
    """``"name:path"`` -> ``(name, path)``; ``"name"`` -> ``(name, None)``; a bare folder -> ``("folder", path)``."""
    if ":" in spec:
        name, path = spec.split(":", 1)
        return name, path
    if spec not in manifests.list_manifests() and Path(spec).expanduser().is_dir():
        return "folder", spec
    return spec, None


def load_dataset(spec: str) -> tuple[str, pd.DataFrame]:
    """Resolve ``spec`` (see the module docstring) to ``(dataset name, schema table)``."""
    name, path = split_spec(spec)
    if name == "folder":
        if path is None:
            raise ValueError("folder datasets need a path: --dataset folder:/path/to/mvtec_style_root")
        from gadlib.data.folder import parse_folder

        folder = Path(path).expanduser()
        return folder.name or "folder", validate_frame(parse_folder(folder), str(folder))
    if name == "synth" and path is None:
        from gadlib.cache import default_cache_dir

        path = str(default_cache_dir() / "synth" / "default")
    if name not in manifests.list_manifests():
        raise ValueError(f"unknown dataset '{name}'; known: {manifests.list_manifests()} "
                         "(or folder:PATH for any MVTec-style folder)")
    return name, validate_frame(manifests.parse(name, path), spec)


def subsample(frame: pd.DataFrame, per_group: int | None, seed: int = 0) -> pd.DataFrame:
    """At most ``per_group`` images per (category, split, label): tiny runs for tests and previews."""
    if per_group is None:
        return frame
    keep = [index for _, group in frame.groupby(["category", "split", "label"])
            for index in group.sample(n=min(per_group, len(group)), random_state=seed).index]
    return frame.loc[sorted(keep)].sort_values(["category", "split", "image_path"]).reset_index(drop=True)
