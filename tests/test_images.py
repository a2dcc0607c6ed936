"""Tests of image and mask loading (gadlib.data.images)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gadlib.data.images import (ImageDataset, Preprocess, check_mask_sizes, load_masks, load_rgb, read_image,
                                read_mask, resize_mask, to_tensor)
from gadlib.data.schema import make_frame


def _save(path, array) -> str:
    Image.fromarray(array).save(path)
    return str(path)


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# -- broken files -------------------------------------------------------------------------------------

def test_read_image_garbage_file_names_the_file(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(ValueError, match=r"broken\.png.*cannot decode"):
        read_image(path)


def test_read_image_truncated_png(tmp_path):
    good = tmp_path / "good.png"
    _save(good, _rgb(64, 64))
    data = good.read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match=r"truncated\.png"):
        read_image(truncated)
    # the intact file decodes to exactly what was written
    assert np.array_equal(np.asarray(read_image(good)), _rgb(64, 64))


def test_read_image_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.png"):
        read_image(tmp_path / "nothere.png")


def test_read_image_converts_to_rgb(tmp_path):
    grey = _save(tmp_path / "grey.png", np.full((5, 7), 100, np.uint8))
    image = read_image(grey)
    assert image.mode == "RGB" and image.size == (7, 5)
    assert (np.asarray(image) == 100).all()


def test_read_mask_corrupt_file(tmp_path):
    path = tmp_path / "mask.png"
    path.write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match=r"mask\.png"):
        read_mask(path, (4, 4))


# -- masks ----------------------------------------------------------------------------------------------

def test_read_mask_wrong_size_names_both_sizes(tmp_path):
    path = _save(tmp_path / "m.png", np.zeros((10, 20), np.uint8))      # 20 wide, 10 high
    with pytest.raises(ValueError, match=r"m\.png.*20x10.*30x10"):
        read_mask(path, (30, 10))
    assert read_mask(path, (20, 10)).shape == (10, 20)


@pytest.mark.parametrize("value", [1, 2, 128, 255])
def test_masks_are_binarised(tmp_path, value):
    array = np.zeros((6, 8), np.uint8)
    array[1:3, 2:5] = value
    mask = read_mask(_save(tmp_path / "m.png", array), (8, 6))
    assert mask.dtype == np.uint8
    assert np.array_equal(mask, (array > 0).astype(np.uint8))


def test_read_mask_none_is_all_zero():
    mask = read_mask(None, (8, 6))
    assert mask.shape == (6, 8) and mask.dtype == np.uint8 and not mask.any()
    assert not read_mask(float("nan"), (8, 6)).any()


def test_check_mask_sizes_names_the_mask(tmp_path):
    rows = []
    for i, mask_shape in enumerate([(16, 16), (16, 12)]):
        image = _save(tmp_path / f"img{i}.png", _rgb(16, 16, i))
        mask = _save(tmp_path / f"mask{i}.png", np.zeros(mask_shape, np.uint8))
        rows.append(dict(image_path=image, mask_path=mask, label=1, defect="crack", category="c",
                         domain="industrial", split="test"))
    rows.append(dict(image_path=_save(tmp_path / "normal.png", _rgb(16, 16, 5)), mask_path=None, label=0,
                     defect="good", category="c", domain="industrial", split="test"))
    frame = make_frame(rows)
    with pytest.raises(ValueError, match=r"mask1\.png.*12x16.*img1\.png.*16x16"):
        check_mask_sizes(frame)
    check_mask_sizes(frame.drop(index=1))  # consistent sizes pass


def test_resize_mask_stays_binary():
    mask = np.zeros((10, 10), np.uint8)
    mask[2:8, 3:6] = 1
    out = resize_mask(mask, 20)
    assert out.shape == (20, 20) and set(np.unique(out)) == {0, 1}
    assert out.sum() == 4 * mask.sum()


def test_load_masks_shape_and_none_rows(tmp_path):
    images = [_save(tmp_path / f"i{i}.png", _rgb(12, 12, i)) for i in range(3)]
    array = np.zeros((12, 12), np.uint8)
    array[:6, :6] = 255
    masks = load_masks([None, _save(tmp_path / "m.png", array), float("nan")], images, 24)
    assert masks.shape == (3, 24, 24) and masks.dtype == np.uint8
    assert not masks[0].any() and not masks[2].any()
    assert masks[1, :12, :12].all() and not masks[1, 12:].any() and not masks[1, :, 12:].any()


def test_load_masks_checks_sizes(tmp_path):
    image = _save(tmp_path / "i.png", _rgb(12, 12))
    with pytest.raises(ValueError, match="must match"):
        load_masks([_save(tmp_path / "m.png", np.zeros((10, 12), np.uint8))], [image], 8)


# -- tensors --------------------------------------------------------------------------------------------

def test_to_tensor_normalisation_known_answer():
    image = Image.fromarray(np.full((10, 14, 3), (51, 102, 204), np.uint8))
    prep = Preprocess(image_size=8, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.1))
    tensor = to_tensor(image, prep)
    assert tensor.shape == (3, 8, 8) and tensor.dtype == torch.float32
    expected = torch.tensor([(0.2 - 0.1) / 0.5, (0.4 - 0.2) / 0.25, (0.8 - 0.3) / 0.1]).view(3, 1, 1)
    torch.testing.assert_close(tensor, expected.expand(3, 8, 8), atol=1e-5, rtol=0)


def test_preprocess_key_changes_with_settings():
    assert Preprocess(64).key() != Preprocess(224).key()
    assert Preprocess(64).key() != Preprocess(64, resample="bilinear").key()
    assert Preprocess(64).key() == Preprocess(64).key()


def test_load_rgb_squashes(tmp_path):
    path = _save(tmp_path / "wide.png", _rgb(10, 30))
    assert load_rgb(path).shape == (10, 30, 3)
    assert load_rgb(path, 16).shape == (16, 16, 3)


def test_image_dataset_items(tmp_path):
    image = _save(tmp_path / "a.png", np.full((20, 20, 3), 255, np.uint8))
    array = np.zeros((20, 20), np.uint8)
    array[10:, :] = 1
    mask = _save(tmp_path / "a_mask.png", array)
    frame = make_frame([dict(image_path=image, mask_path=mask, label=1, defect="x", category="c",
                             domain="d", split="test")])
    dataset = ImageDataset(frame, Preprocess(image_size=10))
    assert len(dataset) == 1
    item = dataset[0]
    assert item["image"].shape == (3, 10, 10) and item["index"] == 0
    assert item["mask"].shape == (10, 10) and item["mask"].dtype == torch.uint8
    assert item["mask"][5:].all() and not item["mask"][:5].any()
    assert "mask" not in ImageDataset(frame, Preprocess(image_size=10), with_masks=False)[0]
