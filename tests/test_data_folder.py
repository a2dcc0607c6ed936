"""Tests for gadlib.data.folder on dummy trees with the real dataset layouts."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gadlib.data.folder import parse_folder
from gadlib.data.schema import COLUMNS


def _img(path: Path, value: int = 128, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (8, 8, 3) if mode == "RGB" else (8, 8)
    Image.fromarray(np.full(shape, value, dtype=np.uint8), mode=mode).save(path)
    return path


def _touch(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _rel(frame, column: str, base: Path) -> list:
    return [None if v is None else Path(v).relative_to(base.resolve()).as_posix() for v in frame[column]]


@pytest.fixture()
def mvtec(tmp_path: Path) -> Path:
    root = tmp_path / "mvtec_anomaly_detection"
    # created in reverse order on purpose: output order must not depend on creation order
    for name in ("001.png", "000.png"):
        _img(root / "bottle/train/good" / name)
    _img(root / "bottle/test/good/000.png")
    for name in ("001.png", "000.png"):
        _img(root / "bottle/test/broken_large" / name)
        _img(root / "bottle/ground_truth/broken_large" / name.replace(".png", "_mask.png"), 255, "L")
    _img(root / "bottle/test/contamination/000.png")
    _img(root / "bottle/ground_truth/contamination/000_mask.png", 255, "L")
    _img(root / "bottle/ground_truth/contamination/007_mask.png", 255, "L")  # mask without image
    _img(root / "screw/train/good/000.png")
    _img(root / "screw/test/thread_top/000.png")
    _img(root / "screw/ground_truth/thread_top/000_mask.png", 255, "L")
    _touch(root / "license.txt")
    _touch(root / "bottle/train/good/.DS_Store")
    _touch(root / "bottle/train/good/notes.txt")
    return root


def test_mvtec_rows_exact(mvtec: Path) -> None:
    frame = parse_folder(mvtec)
    assert list(frame.columns) == list(COLUMNS)
    assert _rel(frame, "image_path", mvtec) == [
        "bottle/train/good/000.png", "bottle/train/good/001.png",
        "bottle/test/good/000.png",
        "bottle/test/broken_large/000.png", "bottle/test/broken_large/001.png",
        "bottle/test/contamination/000.png",
        "screw/train/good/000.png", "screw/test/thread_top/000.png",
    ]
    assert _rel(frame, "mask_path", mvtec) == [
        None, None, None,
        "bottle/ground_truth/broken_large/000_mask.png", "bottle/ground_truth/broken_large/001_mask.png",
        "bottle/ground_truth/contamination/000_mask.png",
        None, "screw/ground_truth/thread_top/000_mask.png",
    ]
    assert frame["label"].tolist() == [0, 0, 0, 1, 1, 1, 0, 1]
    assert frame["defect"].tolist() == ["good"] * 3 + ["broken_large"] * 2 + ["contamination", "good", "thread_top"]
    assert frame["split"].tolist() == ["train", "train", "test", "test", "test", "test", "train", "test"]
    assert frame["category"].tolist() == ["bottle"] * 6 + ["screw"] * 2
    assert set(frame["domain"]) == {"industrial"}
    assert all(Path(p).is_absolute() for p in frame["image_path"])
    assert frame.attrs["missing_masks"] == []


def test_mvtec_categories_filter_domain_and_determinism(mvtec: Path) -> None:
    frame = parse_folder(mvtec, domain="texture", categories=["screw"])
    assert frame["category"].unique().tolist() == ["screw"]
    assert frame["domain"].unique().tolist() == ["texture"]
    assert parse_folder(mvtec).equals(parse_folder(mvtec))


def test_missing_mask_recorded(mvtec: Path) -> None:
    (mvtec / "bottle/ground_truth/broken_large/001_mask.png").unlink()
    frame = parse_folder(mvtec, categories=["bottle"])
    row = frame[frame["image_path"].str.endswith("broken_large/001.png")].iloc[0]
    assert row["mask_path"] is None and row["label"] == 1
    assert frame.attrs["missing_masks"] == [str((mvtec / "bottle/test/broken_large/001.png").resolve())]


def test_btad_ok_ko_with_stem_matched_masks(tmp_path: Path) -> None:
    root = tmp_path / "BTAD"
    _img(root / "01/train/ok/0000.bmp")
    _img(root / "01/test/ok/0000.bmp")
    _img(root / "01/test/ko/0003.bmp")
    _img(root / "01/ground_truth/ko/0003.png", 255, "L")
    _img(root / "02/train/ok/0000.png")
    _img(root / "02/test/ko/0001.png")
    _img(root / "02/ground_truth/ko/0001.png", 255, "L")
    frame = parse_folder(root, layout="btad")
    assert frame.equals(parse_folder(root))  # auto-detection gives the same table
    assert _rel(frame, "image_path", root) == [
        "01/train/ok/0000.bmp", "01/test/ok/0000.bmp", "01/test/ko/0003.bmp",
        "02/train/ok/0000.png", "02/test/ko/0001.png",
    ]
    assert _rel(frame, "mask_path", root) == [None, None, "01/ground_truth/ko/0003.png", None, "02/ground_truth/ko/0001.png"]
    assert frame["label"].tolist() == [0, 0, 1, 0, 1]
    assert frame["defect"].tolist() == ["good", "good", "ko", "good", "ko"]
    assert frame["category"].tolist() == ["01", "01", "01", "02", "02"]


def test_converted_visa_bad_folder_uppercase_suffix(tmp_path: Path) -> None:
    root = tmp_path / "VisA_pytorch/1cls"
    _img(root / "candle/train/good/0001.JPG")
    _img(root / "candle/test/good/0002.JPG")
    _img(root / "candle/test/bad/000.JPG")
    _img(root / "candle/ground_truth/bad/000.png", 255, "L")
    frame = parse_folder(root)
    assert frame["defect"].tolist() == ["good", "good", "bad"]
    assert _rel(frame, "mask_path", root)[-1] == "candle/ground_truth/bad/000.png"


def test_mvtec3d_rgb_only_validation_dropped(tmp_path: Path) -> None:
    root = tmp_path / "mvtec_3d"
    cat = root / "bagel"
    _img(cat / "train/good/rgb/000.png")
    _touch(cat / "train/good/xyz/000.tiff")
    _img(cat / "validation/good/rgb/000.png")
    _img(cat / "test/good/rgb/000.png")
    _img(cat / "test/good/gt/000.png", 0, "L")
    _img(cat / "test/crack/rgb/000.png")
    _img(cat / "test/crack/gt/000.png", 255, "L")
    _touch(cat / "test/crack/xyz/000.tiff")
    frame = parse_folder(root)
    assert _rel(frame, "image_path", root) == [
        "bagel/train/good/rgb/000.png", "bagel/test/good/rgb/000.png", "bagel/test/crack/rgb/000.png",
    ]
    assert _rel(frame, "mask_path", root) == [None, None, "bagel/test/crack/gt/000.png"]
    assert frame["defect"].tolist() == ["good", "good", "crack"]
    with_valid = parse_folder(root, layout="mvtec3d", valid_split="train")
    assert _rel(with_valid, "image_path", root)[1] == "bagel/validation/good/rgb/000.png"
    assert with_valid["split"].tolist() == ["train", "train", "test", "test"]


def _bmad_brain(tmp_path: Path) -> Path:
    root = tmp_path / "Brain"
    _img(root / "train/good/img/00003_60.png", mode="L")
    _img(root / "train/good/img/00003_61.png", mode="L")
    _img(root / "valid/good/img/00025_99.png", mode="L")
    _img(root / "valid/Ungood/img/00124_60.png", mode="L")
    _img(root / "valid/Ungood/label/00124_60.png", 255, "L")
    _img(root / "test/good/img/00000_96.png", mode="L")
    _img(root / "test/Ungood/img/00002_60.png", mode="L")
    _img(root / "test/Ungood/label/00002_60.png", 255, "L")
    _img(root / "test/Ungood/img/00002_68.png", mode="L")  # no label: recorded
    return root


def test_bmad_single_category_and_valid_mapping(tmp_path: Path) -> None:
    root = _bmad_brain(tmp_path)
    frame = parse_folder(root, domain="brain_mri")
    assert frame["category"].unique().tolist() == ["Brain"]
    assert _rel(frame, "image_path", root) == [
        "train/good/img/00003_60.png", "train/good/img/00003_61.png", "test/good/img/00000_96.png",
        "test/Ungood/img/00002_60.png", "test/Ungood/img/00002_68.png",
    ]
    assert _rel(frame, "mask_path", root) == [None, None, None, "test/Ungood/label/00002_60.png", None]
    assert frame["defect"].tolist() == ["good"] * 3 + ["Ungood"] * 2
    assert frame.attrs["missing_masks"] == [str((root / "test/Ungood/img/00002_68.png").resolve())]

    as_train = parse_folder(root, layout="bmad", valid_split="train", category="brain")
    assert as_train["category"].unique().tolist() == ["brain"]
    assert (as_train["split"] == "train").sum() == 3  # valid/good joins, valid/Ungood is dropped
    assert not as_train["image_path"].str.contains("00124_60").any()
    as_test = parse_folder(root, valid_split="test")
    valid_rows = as_test[as_test["image_path"].str.contains("/valid/")]
    assert valid_rows["split"].tolist() == ["test", "test"]
    assert _rel(valid_rows, "mask_path", root) == [None, "valid/Ungood/label/00124_60.png"]


def test_plain_custom_folder_without_masks(tmp_path: Path) -> None:
    root = tmp_path / "my_parts"
    _img(root / "train/good/a.jpg")
    _img(root / "train/good/b.TIF")
    _img(root / "test/good/c.jpeg")
    _img(root / "test/scratch/d.JPG")
    _img(root / "test/scratch/e.tiff")
    frame = parse_folder(root, domain="custom")
    assert _rel(frame, "image_path", root) == [
        "train/good/a.jpg", "train/good/b.TIF", "test/good/c.jpeg", "test/scratch/d.JPG", "test/scratch/e.tiff",
    ]
    assert frame["mask_path"].isna().all()
    assert frame["label"].tolist() == [0, 0, 0, 1, 1]
    assert frame["category"].unique().tolist() == ["my_parts"]
    assert frame.attrs["missing_masks"] == []  # no ground_truth/: nothing to record


def test_missing_root_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        parse_folder(missing)


def test_empty_category_names_folder(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _img(root / "bottle/train/good/000.png")
    (root / "cable/train/good").mkdir(parents=True)
    _touch(root / "cable/test/good/readme.txt")
    with pytest.raises(ValueError, match=r"empty category folder .*cable"):
        parse_folder(root)


def test_requested_category_missing_and_no_categories(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _img(root / "bottle/train/good/000.png")
    with pytest.raises(FileNotFoundError, match=str(root / "cable")):
        parse_folder(root, categories=["bottle", "cable"])
    (tmp_path / "bare/split_csv").mkdir(parents=True)
    with pytest.raises(ValueError, match="no category folders under .*bare"):
        parse_folder(tmp_path / "bare")


def test_layout_errors(mvtec: Path) -> None:
    with pytest.raises(ValueError, match="unknown layout 'weird'"):
        parse_folder(mvtec, layout="weird")
    with pytest.raises(ValueError, match=r"expected a 'rgb/' folder"):
        parse_folder(mvtec, layout="mvtec3d")
    with pytest.raises(ValueError, match="unknown valid_split"):
        parse_folder(mvtec, valid_split="val")


def test_symlinked_view_keeps_link_paths(mvtec: Path, tmp_path: Path) -> None:
    view = tmp_path / "view"
    view.mkdir()
    (view / "bottle").symlink_to(mvtec / "bottle", target_is_directory=True)
    frame = parse_folder(view)
    assert all(p.startswith(str(view / "bottle")) for p in frame["image_path"])
    assert frame["mask_path"].dropna().str.startswith(str(view / "bottle/ground_truth")).all()
