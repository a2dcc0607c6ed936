"""Tests for gadlib.data.visa on a dummy tree with VisA's original layout and split CSV."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gadlib.data.visa import parse_visa

HEADER = "object,split,label,image,mask"


def _img(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _rgb(path: Path) -> None:
    _img(path, np.full((8, 8, 3), 90, dtype=np.uint8))


def _visa_mask(path: Path) -> None:
    # VisA masks hold small class values, not 255
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[2:4, 2:4] = 1
    _img(path, mask)


@pytest.fixture()
def visa(tmp_path: Path) -> Path:
    root = tmp_path / "VisA"
    rows = [HEADER]
    for category in ("pcb1", "candle"):  # CSV order is not alphabetical on purpose
        for name, split in (("0002.JPG", "test"), ("0001.JPG", "train"), ("0000.JPG", "train")):
            rel = f"{category}/Data/Images/Normal/{name}"
            _rgb(root / rel)
            rows.append(f"{category},{split},normal,{rel},")
        for index in (1, 0):
            rel = f"{category}/Data/Images/Anomaly/{index:03d}.JPG"
            mask = f"{category}/Data/Masks/Anomaly/{index:03d}.png"
            _rgb(root / rel)
            _visa_mask(root / mask)
            rows.append(f"{category},test,anomaly,{rel},{mask}")
    anno = ["image,label,mask",
            "candle/Data/Images/Normal/0000.JPG,normal,",
            'candle/Data/Images/Anomaly/000.JPG,"chunk of wax missing",candle/Data/Masks/Anomaly/000.png',
            'candle/Data/Images/Anomaly/001.JPG,"wax melded out of the candle,weird candle wick",'
            "candle/Data/Masks/Anomaly/001.png"]
    (root / "candle/image_anno.csv").write_text("\n".join(anno) + "\n")
    (root / "split_csv").mkdir()
    (root / "split_csv/1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def _rel(values, base: Path) -> list:
    return [None if v is None else Path(v).relative_to(base.resolve()).as_posix() for v in values]


def test_visa_rows_exact(visa: Path) -> None:
    frame = parse_visa(visa)
    expected_images = []
    for category in ("candle", "pcb1"):
        expected_images += [f"{category}/Data/Images/Normal/{n}" for n in ("0000.JPG", "0001.JPG", "0002.JPG")]
    assert frame["category"].tolist() == ["candle"] * 5 + ["pcb1"] * 5
    assert frame["split"].tolist() == (["train", "train", "test", "test", "test"]) * 2
    assert frame["label"].tolist() == [0, 0, 0, 1, 1] * 2
    images = _rel(frame["image_path"], visa)
    assert images[:3] == expected_images[:3] and images[5:8] == expected_images[3:]
    assert frame["defect"].tolist()[:5] == [
        "good", "good", "good", "chunk of wax missing", "wax melded out of the candle,weird candle wick",
    ]
    assert frame["defect"].tolist()[8:] == ["anomaly", "anomaly"]  # pcb1 has no image_anno.csv
    assert _rel(frame["mask_path"], visa)[3:5] == ["candle/Data/Masks/Anomaly/000.png", "candle/Data/Masks/Anomaly/001.png"]
    assert frame["mask_path"].iloc[:3].isna().all()
    assert set(frame["domain"]) == {"industrial"}
    assert frame.attrs["missing_masks"] == []
    assert np.asarray(Image.open(frame["mask_path"].iloc[3])).max() == 1  # not 0/255: binarise with > 0


def test_visa_categories_and_split_csv_name(visa: Path) -> None:
    frame = parse_visa(visa, split_csv="1cls.csv", categories=["pcb1"])
    assert frame["category"].unique().tolist() == ["pcb1"]
    assert len(frame) == 5


def test_visa_missing_mask_recorded(visa: Path) -> None:
    (visa / "pcb1/Data/Masks/Anomaly/001.png").unlink()
    frame = parse_visa(visa)
    missing = str((visa / "pcb1/Data/Images/Anomaly/001.JPG").resolve())
    assert frame.attrs["missing_masks"] == [missing]
    assert frame.loc[frame["image_path"] == missing, "mask_path"].iloc[0] is None


def test_visa_missing_image_names_file(visa: Path) -> None:
    (visa / "candle/Data/Images/Normal/0001.JPG").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\) .*candle/Data/Images/Normal/0001.JPG"):
        parse_visa(visa)


def test_visa_split_csv_errors(visa: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="2cls_fewshot.csv"):
        parse_visa(visa, split_csv="2cls_fewshot.csv")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        parse_visa(tmp_path / "nope")
    bad = tmp_path / "bad.csv"
    bad.write_text("category,split,label,image\n")
    with pytest.raises(ValueError, match=r"bad.csv: expected columns object,split,label,image,mask"):
        parse_visa(visa, split_csv=bad)
    wrong = tmp_path / "wrong.csv"
    wrong.write_text(f"{HEADER}\ncandle,val,normal,candle/Data/Images/Normal/0000.JPG,\n")
    with pytest.raises(ValueError, match=r"wrong.csv:2: .*split='val'"):
        parse_visa(visa, split_csv=wrong)
