"""Parser for the seven MedIAnomaly benchmark datasets in their released layout.

MedIAnomaly (Cai et al., 2024, https://github.com/caiyu6666/MedIAnomaly) ships pre-processed
copies (``~/MedIAnomaly-Data``); the layout below is the one its README and data loaders use::

    RSNA/ VinCXR/ BrainTumor/ LAG/      images/<file>.png|.jpg  +  data.json
    ISIC2018_Task3/                     ISIC2018_Task3_{Training,Test}_Input/<image>.jpg
                                        ISIC2018_Task3_{Training,Test}_GroundTruth/
                                            ISIC2018_Task3_{Training,Test}_GroundTruth.csv
    Camelyon16/                         train/good/  test/good/  test/Ungood/
    BraTS2021/                          train/<slice>.png  test/normal/  test/tumor/
                                        test/annotation/<tumor name with "flair" -> "seg">

``data.json`` is ``{"train": {"0": [...], "unlabeled": {"0": [...], "1": [...]}},
"test": {"0": [...], "1": [...]}}``: ``"0"`` normal, ``"1"`` abnormal file names inside
``images/``. The ``unlabeled`` pool (used by the semi-supervised DDAD setting) is not read.
ISIC2018 follows the loader: training images with ``NV == 1`` are the normal training set; test
images with ``NV == 1`` are normal and all other classes anomalous (defect = class column, lower
case). Only BraTS2021 has pixel masks.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from gadlib.data.folder import list_images, parse_category
from gadlib.data.schema import make_frame

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MedicalDataset:
    """How one MedIAnomaly dataset is stored."""

    key: str
    folder: str
    kind: str  # "json", "isic", "camelyon" or "brats"
    domain: str
    defect: str


DATASETS: dict[str, MedicalDataset] = {
    d.key: d
    for d in (
        MedicalDataset("rsna", "RSNA", "json", "chest_xray", "lung_opacity"),
        MedicalDataset("vindr_cxr", "VinCXR", "json", "chest_xray", "abnormal"),
        MedicalDataset("brain_tumor", "BrainTumor", "json", "brain_mri", "tumor"),
        MedicalDataset("lag", "LAG", "json", "fundus", "glaucoma"),
        MedicalDataset("isic2018", "ISIC2018_Task3", "isic", "dermoscopy", "lesion"),
        MedicalDataset("camelyon16", "Camelyon16", "camelyon", "histopathology", "metastasis"),
        MedicalDataset("brats2021", "BraTS2021", "brats", "brain_mri", "tumor"),
    )
}
# Brain Tumor MRI file names: Te-gl_0010.jpg, Tr-meTr_0001.jpg, Te-no_0013.jpg, ...
_BRAIN_TUMOR_CLASSES = {"gl": "glioma", "me": "meningioma", "pi": "pituitary"}
_BRAIN_TUMOR_RE = re.compile(r"^(?:Te|Tr)-(gl|me|pi|no)", re.IGNORECASE)
_ISIC_CLASSES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def resolve_dataset(name: str) -> MedicalDataset:
    """Look a dataset up by key (``"vindr_cxr"``) or release folder name (``"VinCXR"``).

    Raises:
        ValueError: unknown name; the message lists the valid ones.
    """
    wanted = _normalise(name)
    for spec in DATASETS.values():
        if wanted in {_normalise(spec.key), _normalise(spec.folder)}:
            return spec
    valid = ", ".join(f"{s.key} ({s.folder})" for s in DATASETS.values())
    raise ValueError(f"unknown MedIAnomaly dataset {name!r}; valid names: {valid}")


def _dataset_dir(root: Path, spec: MedicalDataset) -> Path:
    """``root/<folder>`` if present, else ``root`` itself (the dataset folder was passed)."""
    if (root / spec.folder).is_dir():
        return root / spec.folder
    markers = {
        "json": ["data.json"],
        "isic": ["ISIC2018_Task3_Training_Input", "ISIC2018_Task3_Test_Input"],
        "camelyon": ["train", "test"],
        "brats": ["train", "test"],
    }[spec.kind]
    if any((root / m).exists() for m in markers):
        return root
    raise FileNotFoundError(
        f"MedIAnomaly dataset {spec.key!r} not found: neither {root / spec.folder} nor {root} holds "
        f"{' / '.join(markers)}; pass the MedIAnomaly-Data folder or the {spec.folder} folder itself"
    )


def _row(image: Path, label: int, defect: str, spec: MedicalDataset, split: str, mask: Path | None = None) -> dict:
    return {
        "image_path": os.path.abspath(image),
        "mask_path": os.path.abspath(mask) if mask is not None else None,
        "label": label,
        "defect": defect,
        "category": spec.key,
        "domain": spec.domain,
        "split": split,
    }


def _check_files(paths: list[Path], source: Path) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} image(s) listed in {source} are missing, e.g. {missing[0]}; "
            f"re-extract the dataset archive next to {source.name}"
        )


def _brain_tumor_defect(file_name: str) -> str:
    match = _BRAIN_TUMOR_RE.match(file_name)
    return _BRAIN_TUMOR_CLASSES.get(match.group(1).lower(), "tumor") if match else "tumor"


def _parse_json(base: Path, spec: MedicalDataset) -> list[dict]:
    json_path = base / "data.json"
    if not json_path.is_file():
        raise FileNotFoundError(f"split file not found: {json_path}; MedIAnomaly ships images/ and data.json")
    with json_path.open() as handle:
        data = json.load(handle)
    try:
        lists = {("train", 0): data["train"]["0"], ("test", 0): data["test"]["0"], ("test", 1): data["test"]["1"]}
    except (KeyError, TypeError) as err:
        raise ValueError(
            f"{json_path}: expected {{'train': {{'0': [...]}}, 'test': {{'0': [...], '1': [...]}}}}; "
            f"missing key {err}"
        ) from err
    image_dir = base / "images"
    rows: list[dict] = []
    for (split, label), names in lists.items():
        paths = [image_dir / n for n in sorted(names)]
        _check_files(paths, json_path)
        for path in paths:
            defect = "good"
            if label == 1:
                defect = _brain_tumor_defect(path.name) if spec.key == "brain_tumor" else spec.defect
            rows.append(_row(path, label, defect, spec, split))
    return rows


def _read_isic_csv(csv_path: Path) -> list[tuple[str, str]]:
    """``(image id, class)`` pairs from an ISIC 2018 Task 3 ground-truth CSV (one-hot columns)."""
    if not csv_path.is_file():
        raise FileNotFoundError(f"ISIC ground truth not found: {csv_path}; download it from challenge.isic-archive.com")
    with csv_path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        if "image" not in fields or not set(_ISIC_CLASSES) <= set(fields):
            raise ValueError(f"{csv_path}: expected columns image,{','.join(_ISIC_CLASSES)}; found {fields}")
        pairs = []
        for row in reader:
            hot = [c for c in _ISIC_CLASSES if float(row[c] or 0) == 1.0]
            if len(hot) != 1:
                raise ValueError(f"{csv_path}: image {row['image']} has {len(hot)} classes set, expected 1")
            pairs.append((row["image"].strip(), hot[0]))
    return sorted(pairs)


def _parse_isic(base: Path, spec: MedicalDataset) -> list[dict]:
    rows: list[dict] = []
    for split, tag in (("train", "Training"), ("test", "Test")):
        csv_path = base / f"ISIC2018_Task3_{tag}_GroundTruth" / f"ISIC2018_Task3_{tag}_GroundTruth.csv"
        image_dir = base / f"ISIC2018_Task3_{tag}_Input"
        pairs = _read_isic_csv(csv_path)
        if split == "train":  # one-class training: nevi only
            pairs = [p for p in pairs if p[1] == "NV"]
        paths = [image_dir / f"{image_id}.jpg" for image_id, _ in pairs]
        _check_files(paths, csv_path)
        split_rows = [
            _row(path, int(cls != "NV"), "good" if cls == "NV" else cls.lower(), spec, split)
            for path, (_, cls) in zip(paths, pairs)
        ]
        rows.extend(sorted(split_rows, key=lambda r: (r["label"], r["image_path"])))
    return rows


def _parse_camelyon(base: Path, spec: MedicalDataset) -> list[dict]:
    rows = parse_category(base, category=spec.key, domain=spec.domain, layout="mvtec")
    for row in rows:
        if row["label"] == 1:
            row["defect"] = spec.defect
    return rows


def _parse_brats(base: Path, spec: MedicalDataset, missing: list[str]) -> list[dict]:
    train_dir = base / "train"
    # the current loader lists train/*.png; an older release nests slices one folder deeper
    train = sorted((p for p in train_dir.rglob("*") if p.is_file() and p.suffix.lower() == ".png"),
                   key=lambda p: p.relative_to(train_dir).as_posix())
    rows = [_row(p, 0, "good", spec, "train") for p in train]
    rows += [_row(p, 0, "good", spec, "test") for p in list_images(base / "test" / "normal")]
    annotation = base / "test" / "annotation"
    for image in list_images(base / "test" / "tumor"):
        candidates = [annotation / image.name.replace("flair", "seg"), annotation / image.name]
        mask = next((c for c in candidates if c.is_file()), None)
        if mask is None:
            missing.append(os.path.abspath(image))
        rows.append(_row(image, 1, spec.defect, spec, "test", mask))
    if not rows:
        raise ValueError(f"empty dataset folder {base}: expected train/*.png and test/normal|tumor/*.png")
    return rows


def parse_medianomaly(root: str | Path, name: str) -> pd.DataFrame:
    """Parse one MedIAnomaly dataset into the shared table.

    Args:
        root: the ``MedIAnomaly-Data`` folder, or the dataset's own folder (e.g. ``.../RSNA``).
        name: ``rsna``, ``vindr_cxr``, ``brain_tumor``, ``lag``, ``isic2018``, ``camelyon16`` or
            ``brats2021`` (release folder names such as ``VinCXR`` work too).

    Returns:
        DataFrame with the shared schema; ``category`` is the dataset key, ``domain`` its
        modality (``chest_xray``, ``brain_mri``, ``fundus``, ``dermoscopy``, ``histopathology``).
        Rows are sorted by split (train, test), label and file name. Only ``brats2021`` fills
        ``mask_path``; its tumour slices without an annotation are in ``frame.attrs["missing_masks"]``.

    Raises:
        ValueError: unknown ``name`` (lists the valid ones) or a malformed split file.
        FileNotFoundError: the dataset folder, its split file or a listed image is missing.
    """
    spec = resolve_dataset(name)
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise FileNotFoundError(
            f"MedIAnomaly folder not found: {root_path}; pass the MedIAnomaly-Data folder "
            f"(holding {spec.folder}/) or the {spec.folder} folder itself"
        )
    base = _dataset_dir(root_path, spec)
    missing: list[str] = []
    if spec.kind == "json":
        rows = _parse_json(base, spec)
    elif spec.kind == "isic":
        rows = _parse_isic(base, spec)
    elif spec.kind == "camelyon":
        rows = _parse_camelyon(base, spec)
    else:
        rows = _parse_brats(base, spec, missing)
    if missing:
        logger.warning("%d %s tumour slice(s) have no annotation, e.g. %s", len(missing), spec.key, missing[0])
    frame = make_frame(rows)
    frame.attrs["missing_masks"] = missing
    return frame
