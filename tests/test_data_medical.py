"""Tests for gadlib.data.medical on dummy trees with the MedIAnomaly release layout."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gadlib.data.medical import DATASETS, parse_medianomaly


def _img(path: Path, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(path)
    return path


def _json_dataset(base: Path, split: dict) -> None:
    names = [n for part in (split["train"]["0"], split["test"]["0"], split["test"]["1"]) for n in part]
    for extra in split["train"].get("unlabeled", {}).values():
        names += extra
    for name in names:
        _img(base / "images" / name)
    (base / "data.json").write_text(json.dumps(split))


def _names(frame) -> list[str]:
    return [Path(p).name for p in frame["image_path"]]


def test_rsna_json_rows(tmp_path: Path) -> None:
    split = {
        "train": {"0": ["b.png", "a.png"], "unlabeled": {"0": ["u0.png"], "1": ["u1.png"]}},
        "test": {"0": ["c.png"], "1": ["e.png", "d.png"]},
    }
    _json_dataset(tmp_path / "MedIAnomaly-Data/RSNA", split)
    frame = parse_medianomaly(tmp_path / "MedIAnomaly-Data", "rsna")
    assert _names(frame) == ["a.png", "b.png", "c.png", "d.png", "e.png"]  # unlabeled pool not read
    assert frame["split"].tolist() == ["train", "train", "test", "test", "test"]
    assert frame["label"].tolist() == [0, 0, 0, 1, 1]
    assert frame["defect"].tolist() == ["good", "good", "good", "lung_opacity", "lung_opacity"]
    assert set(frame["category"]) == {"rsna"} and set(frame["domain"]) == {"chest_xray"}
    assert frame["mask_path"].isna().all()
    # the dataset folder itself works as root, and release folder names are accepted
    assert parse_medianomaly(tmp_path / "MedIAnomaly-Data/RSNA", "RSNA").equals(frame)


def test_brain_tumor_defects_from_file_names(tmp_path: Path) -> None:
    split = {"train": {"0": ["Tr-no_0010.jpg"]},
             "test": {"0": ["Te-noTr_0000.jpg"], "1": ["Te-gl_0010.jpg", "Tr-meTr_0001.jpg", "Te-pi_0003.jpg"]}}
    _json_dataset(tmp_path / "BrainTumor", split)
    frame = parse_medianomaly(tmp_path, "brain_tumor")
    assert _names(frame) == ["Tr-no_0010.jpg", "Te-noTr_0000.jpg", "Te-gl_0010.jpg", "Te-pi_0003.jpg", "Tr-meTr_0001.jpg"]
    assert frame["defect"].tolist() == ["good", "good", "glioma", "pituitary", "meningioma"]
    assert set(frame["domain"]) == {"brain_mri"}


def test_vindr_alias_and_lag_domain(tmp_path: Path) -> None:
    split = {"train": {"0": ["n1.png"]}, "test": {"0": ["n2.png"], "1": ["a1.png"]}}
    _json_dataset(tmp_path / "VinCXR", split)
    _json_dataset(tmp_path / "LAG", split)
    assert parse_medianomaly(tmp_path, "VinDr-CXR")["category"].unique().tolist() == ["vindr_cxr"]
    lag = parse_medianomaly(tmp_path, "lag")
    assert lag["domain"].unique().tolist() == ["fundus"] and lag["defect"].tolist()[-1] == "glaucoma"


def test_json_errors_name_file(tmp_path: Path) -> None:
    base = tmp_path / "RSNA"
    _json_dataset(base, {"train": {"0": ["a.png"]}, "test": {"0": ["b.png"], "1": ["c.png"]}})
    (base / "images/c.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\) listed in .*data.json .*c.png"):
        parse_medianomaly(tmp_path, "rsna")
    (base / "data.json").write_text(json.dumps({"train": {"0": []}, "test": {"0": []}}))
    with pytest.raises(ValueError, match=r"data.json: expected .*missing key '1'"):
        parse_medianomaly(tmp_path, "rsna")
    with pytest.raises(FileNotFoundError, match="LAG"):
        parse_medianomaly(tmp_path, "lag")


def test_unknown_name_lists_valid(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown MedIAnomaly dataset 'chexpert'") as err:
        parse_medianomaly(tmp_path, "chexpert")
    for key in DATASETS:
        assert key in str(err.value)


def _isic_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    classes = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    lines = ["image," + ",".join(classes)]
    for image, cls in rows:
        lines.append(image + "," + ",".join("1.0" if c == cls else "0.0" for c in classes))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def test_isic2018_nv_is_normal(tmp_path: Path) -> None:
    base = tmp_path / "ISIC2018_Task3"
    train = [("ISIC_0024306", "NV"), ("ISIC_0024305", "NV"), ("ISIC_0024310", "MEL")]
    test = [("ISIC_0034524", "NV"), ("ISIC_0034525", "BCC"), ("ISIC_0034526", "MEL")]
    for image, _ in train:
        _img(base / f"ISIC2018_Task3_Training_Input/{image}.jpg")
    for image, _ in test:
        _img(base / f"ISIC2018_Task3_Test_Input/{image}.jpg")
    _isic_csv(base / "ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv", train)
    _isic_csv(base / "ISIC2018_Task3_Test_GroundTruth/ISIC2018_Task3_Test_GroundTruth.csv", test)
    frame = parse_medianomaly(tmp_path, "isic2018")
    assert _names(frame) == ["ISIC_0024305.jpg", "ISIC_0024306.jpg", "ISIC_0034524.jpg", "ISIC_0034525.jpg", "ISIC_0034526.jpg"]
    assert frame["split"].tolist() == ["train", "train", "test", "test", "test"]
    assert frame["label"].tolist() == [0, 0, 0, 1, 1]
    assert frame["defect"].tolist() == ["good", "good", "good", "bcc", "mel"]
    assert set(frame["domain"]) == {"dermoscopy"}


def test_camelyon16_folder_layout(tmp_path: Path) -> None:
    base = tmp_path / "Camelyon16"
    _img(base / "train/good/1000.png")
    _img(base / "test/good/1001.png")
    _img(base / "test/Ungood/100.png")
    frame = parse_medianomaly(tmp_path, "camelyon16")
    assert frame["label"].tolist() == [0, 0, 1]
    assert frame["defect"].tolist() == ["good", "good", "metastasis"]
    assert set(frame["category"]) == {"camelyon16"} and set(frame["domain"]) == {"histopathology"}


def test_brats2021_masks_flair_to_seg(tmp_path: Path) -> None:
    base = tmp_path / "BraTS2021"
    _img(base / "train/BraTS2021_00000_flair_60.png")
    _img(base / "train/BraTS2021_00001/BraTS2021_00001_flair_70.png")  # older nested release
    _img(base / "test/normal/BraTS2021_00002_flair_10.png")
    _img(base / "test/tumor/BraTS2021_00002_flair_80.png")
    _img(base / "test/annotation/BraTS2021_00002_seg_80.png", 255)
    _img(base / "test/tumor/BraTS2021_00003_flair_81.png")  # no annotation
    frame = parse_medianomaly(tmp_path, "brats2021")
    assert _names(frame) == ["BraTS2021_00000_flair_60.png", "BraTS2021_00001_flair_70.png",
                             "BraTS2021_00002_flair_10.png", "BraTS2021_00002_flair_80.png",
                             "BraTS2021_00003_flair_81.png"]
    assert frame["split"].tolist() == ["train", "train", "test", "test", "test"]
    assert frame["label"].tolist() == [0, 0, 0, 1, 1]
    masks = [None if m is None else Path(m).name for m in frame["mask_path"]]
    assert masks == [None, None, None, "BraTS2021_00002_seg_80.png", None]
    assert frame.attrs["missing_masks"] == [str((base / "test/tumor/BraTS2021_00003_flair_81.png").resolve())]
