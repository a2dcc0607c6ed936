"""Tests of anomaly simulation on normal images (gadlib.data.simulate)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from gadlib.data.simulate import SIMULATORS, cut_paste, noise_blob, simulate
from gadlib.data.synth import render_normal


@pytest.fixture(scope="module")
def normal() -> np.ndarray:
    return render_normal("woven_fabric", 64, np.random.default_rng(0))


def _check_output(image, out, mask):
    assert out.shape == image.shape and out.dtype == np.uint8
    assert mask.shape == image.shape[:2] and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1} and mask.sum() > 0
    assert np.array_equal(out[mask == 0], image[mask == 0]), "pixels outside the mask changed"


@pytest.mark.parametrize("method", sorted(SIMULATORS))
@pytest.mark.parametrize("seed", range(8))
def test_outputs_preserve_everything_outside_the_mask(normal, method, seed):
    out, mask = simulate(normal, method, np.random.default_rng(seed))
    _check_output(normal, out, mask)
    assert mask.mean() < 0.2
    assert (out != normal).any(axis=-1)[mask == 1].mean() > 0.5, "the mask should mark changed pixels"


@pytest.mark.parametrize("method", sorted(SIMULATORS))
@pytest.mark.parametrize("shape", [(48, 40), (48, 40, 1), (48, 40, 3)])
def test_grey_and_colour_inputs(method, shape):
    image = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    image = ndimage.uniform_filter(image, 3)  # some structure, still uint8
    out, mask = simulate(image, method, np.random.default_rng(2))
    _check_output(image, out, mask)


@pytest.mark.parametrize("method", sorted(SIMULATORS))
def test_seeded(normal, method):
    a = simulate(normal, method, np.random.default_rng(4))
    b = simulate(normal, method, np.random.default_rng(4))
    c = simulate(normal, method, np.random.default_rng(5))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_cut_paste_mask_is_exactly_the_pasted_pixels():
    image = np.full((64, 64, 3), 200, np.uint8)
    source = np.full((64, 64, 3), 7, np.uint8)  # every pasted pixel is recognisable
    for seed in range(10):
        out, mask = cut_paste(image, np.random.default_rng(seed), source=source, jitter=0.0)
        assert np.array_equal(mask == 1, (out == 7).all(axis=2))


def test_cut_paste_without_rotation_pastes_a_rectangle_of_the_requested_area():
    image = np.zeros((100, 100), np.uint8)
    source = np.full((100, 100), 255, np.uint8)
    for seed in range(10):
        _, mask = cut_paste(image, np.random.default_rng(seed), source=source, rotate=False,
                            area_range=(0.01, 0.02), aspect_range=(0.5, 2.0))
        rows, cols = np.nonzero(mask)
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert mask.sum() == height * width  # a full rectangle
        assert 70 <= mask.sum() <= 240  # 1 %-2 % of 10 000 pixels, with rounding
        assert 0.3 <= width / height <= 3.0


def test_cut_paste_from_itself_copies_image_content():
    image = render_normal("pcb", 64, np.random.default_rng(3))
    out, mask = cut_paste(image, np.random.default_rng(0), rotate=False, jitter=0.0, area_range=(0.02, 0.03))
    rows, cols = np.nonzero(mask)
    patch = out[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    ph, pw = patch.shape[:2]
    windows = np.lib.stride_tricks.sliding_window_view(image, (ph, pw, 3))[..., 0, :, :, :]
    assert (windows == patch).all(axis=(-3, -2, -1)).any(), "pasted patch should come from the image"


def test_cut_paste_rotation_gives_non_rectangular_masks():
    image = np.zeros((64, 64, 3), np.uint8)
    source = np.full((64, 64, 3), 255, np.uint8)
    fill = []
    for seed in range(10):
        _, mask = cut_paste(image, np.random.default_rng(seed), source=source, area_range=(0.03, 0.05))
        rows, cols = np.nonzero(mask)
        fill.append(mask.sum() / ((np.ptp(rows) + 1) * (np.ptp(cols) + 1)))
        assert ndimage.label(mask)[1] == 1
    assert min(fill) < 0.9


def test_noise_blob_is_one_smooth_blob_of_the_requested_size():
    image = np.full((80, 80, 3), 128, np.uint8)
    for seed in range(10):
        _, mask = noise_blob(image, np.random.default_rng(seed), area_range=(0.02, 0.04))
        assert ndimage.label(mask)[1] == 1
        assert mask.mean() <= 0.04 + 1e-9
        assert mask.mean() >= 0.005


def test_noise_blob_blends_the_given_source():
    image = np.zeros((64, 64), np.uint8)
    source = np.full((64, 64), 200, np.uint8)
    out, mask = noise_blob(image, np.random.default_rng(0), source=source, opacity_range=(0.5, 0.5))
    assert np.all(out[mask == 1] == 100)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda img, rng: simulate(img, "draem", rng), "cut_paste"),
        (lambda img, rng: cut_paste(img.astype(np.float32), rng), "uint8"),
        (lambda img, rng: cut_paste(img, rng, source=img[..., 0]), "channels"),
        (lambda img, rng: cut_paste(img, rng, area_range=(0.2, 0.1)), "area_range"),
        (lambda img, rng: cut_paste(img, rng, aspect_range=(0.0, 2.0)), "aspect_range"),
        (lambda img, rng: noise_blob(img, rng, opacity_range=(0.5, 1.5)), "opacity_range"),
        (lambda img, rng: noise_blob(img, rng, source=img[:32]), "shape"),
        (lambda img, rng: noise_blob(img[..., 0][..., None].repeat(2, axis=2), rng), "image"),
    ],
)
def test_bad_arguments(normal, call, message):
    with pytest.raises(ValueError, match=message):
        call(normal, np.random.default_rng(0))


def test_dispatch_matches_direct_call(normal):
    direct = cut_paste(normal, np.random.default_rng(9), rotate=False)
    named = simulate(normal, "cut_paste", np.random.default_rng(9), rotate=False)
    assert np.array_equal(direct[0], named[0]) and np.array_equal(direct[1], named[1])
