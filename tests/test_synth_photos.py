"""Tests of the photo-based source categories (gadlib.data.synth_photos) and the extra defect families."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from gadlib.data.load import load_dataset
from gadlib.data.synth import (
    ALL_CATEGORIES, ALL_DEFECTS, CATEGORIES, DEFECTS, EXTRA_DEFECTS, PHOTO_CATEGORIES, apply_defect,
    generate_suite, render_normal,
)
from gadlib.data.synth_photos import PHOTO_OBJECTS, PHOTO_TEXTURES, photograph


def _grey(image: np.ndarray) -> np.ndarray:
    return image.astype(float).mean(axis=2)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Of the lightly blurred grey images: how much two images show the same thing in the same place."""
    a, b = (ndimage.gaussian_filter(_grey(x), 1.5).ravel() for x in (a, b))
    return float(np.corrcoef(a, b)[0, 1])


def test_the_registry_adds_eighteen_named_categories_and_four_defect_families():
    assert len(PHOTO_CATEGORIES) == 18 and len(CATEGORIES) + len(PHOTO_CATEGORIES) == len(ALL_CATEGORIES) == 27
    assert not set(PHOTO_CATEGORIES) & set(CATEGORIES)
    assert set(EXTRA_DEFECTS) == {"burn", "thread", "discolouration", "fold"} and not set(EXTRA_DEFECTS) & set(DEFECTS)


@pytest.mark.parametrize("category", PHOTO_CATEGORIES)
def test_photo_category_renders_seeded_structured_images(category):
    first = render_normal(category, 128, np.random.default_rng(5))     # the suite's default size
    again = render_normal(category, 128, np.random.default_rng(5))
    other = render_normal(category, 128, np.random.default_rng(6))
    assert first.shape == (128, 128, 3) and first.dtype == np.uint8
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert first.std() > 3
    grey = _grey(first)
    assert np.corrcoef(grey[:, :-1].ravel(), grey[:, 1:].ravel())[0, 1] > 0.5, "looks like noise"


def test_objects_are_one_photo_under_a_small_pose_jitter_and_textures_are_different_crops():
    for name in PHOTO_OBJECTS:
        images = [render_normal(name, 64, np.random.default_rng(seed)) for seed in range(3)]
        assert min(_correlation(images[0], image) for image in images[1:]) > 0.7, name
    for name in ("gravel", "grass", "star_field"):
        images = [render_normal(name, 64, np.random.default_rng(seed)) for seed in range(4)]
        assert np.mean([_correlation(images[0], image) for image in images[1:]]) < 0.3, name


def test_greyscale_textures_carry_their_tint():
    brick = np.stack([render_normal("brick", 64, np.random.default_rng(seed)) for seed in range(4)]).astype(float)
    red, green, blue = brick.mean(axis=(0, 1, 2))
    tint = PHOTO_TEXTURES["brick"][2]
    assert red / green == pytest.approx(tint[0] / tint[1], rel=0.08)
    assert green / blue == pytest.approx(tint[1] / tint[2], rel=0.08)


def test_photographs_are_float_rgb_and_read_only():
    for name in ("brick", "logo", "stereo_motorcycle"):
        image = photograph(name)
        assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.float32
        assert 0 <= image.min() and image.max() <= 1 and image.max() > 0.5
        with pytest.raises(ValueError):
            image[0, 0, 0] = 0.5


@pytest.mark.parametrize("defect", EXTRA_DEFECTS)
@pytest.mark.parametrize("category", ["tile", "screw", "gravel", "horse"])
def test_extra_defect_mask_is_exactly_what_changed(category, defect):
    for seed in range(3):
        rng = np.random.default_rng(seed)
        normal = render_normal(category, 64, rng)
        defective, mask = apply_defect(normal, defect, rng, category=category)
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1} and mask.sum() >= 4
        assert mask.mean() < 0.25, "defects should be local, not cover the image"
        changed = (defective != normal).any(axis=2)
        assert not (changed & (mask == 0)).any(), "a pixel outside the mask changed"
        assert changed[mask == 1].mean() > 0.7


def _flat(value=0.55) -> np.ndarray:
    return np.full((96, 96, 3), int(value * 255), np.uint8)


def test_each_extra_defect_does_what_its_name_says():
    flat = _flat()
    burnt, mask = apply_defect(flat, "burn", np.random.default_rng(0), category="tile")
    inside = burnt[mask == 1].astype(float)
    assert inside.mean() < flat.mean() - 20 and (inside[:, 0] >= inside[:, 2]).all()     # darker, brown

    fibre, mask = apply_defect(flat, "thread", np.random.default_rng(0), category="tile")
    ys, xs = np.nonzero(mask)
    assert mask.mean() < 0.03 and max(np.ptp(ys), np.ptp(xs)) > 0.2 * 96                  # thin and long

    tinted, mask = apply_defect(flat, "discolouration", np.random.default_rng(0), category="tile")
    inside = tinted[mask == 1].astype(float)
    assert mask.mean() > 0.02 and np.ptp(inside.mean(axis=0)) > 5                          # colour, not grey
    assert np.abs(inside.mean() - flat.mean()) < 0.15 * 255                                 # faint

    creased, mask = apply_defect(flat, "fold", np.random.default_rng(0), category="tile")
    inside = creased[mask == 1].astype(float).mean(axis=1)
    assert (inside > flat.mean() + 10).any() and (inside < flat.mean() - 10).any()          # light and dark sides


def test_default_suite_keeps_the_procedural_categories_and_six_defects(tmp_path):
    frame = generate_suite(tmp_path / "default", n_train=0, n_test_normal=1, n_test_per_defect=1, size=32)
    assert sorted(frame["category"].unique()) == sorted(CATEGORIES)
    assert sorted(frame.loc[frame["label"] == 1, "defect"].unique()) == sorted(DEFECTS)


def test_a_suite_of_photo_categories_and_new_defects_round_trips(tmp_path):
    root = tmp_path / "photos"
    frame = generate_suite(root, categories=["brick", "horse", "tile"], defects=["burn", "fold", "crack"],
                           n_train=2, n_test_normal=1, n_test_per_defect=1, size=48)
    assert sorted(frame["category"].unique()) == ["brick", "horse", "tile"]
    assert len(frame) == 3 * (2 + 1 + 3) and frame["mask_path"].notna().sum() == 9
    _, again = load_dataset(f"synth:{root}")
    assert sorted(again["image_path"]) == sorted(frame["image_path"])


def test_unknown_names_list_every_known_one(tmp_path):
    with pytest.raises(ValueError, match="gravel"):
        generate_suite(tmp_path, categories=["granite"])
    with pytest.raises(ValueError, match="discolouration"):
        apply_defect(_flat(), "dent", np.random.default_rng(0))
    assert set(ALL_DEFECTS) == set(DEFECTS) | set(EXTRA_DEFECTS)
