"""Tests of the procedural synthetic suite (gadlib.data.synth)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from gadlib.data.schema import COLUMNS, validate_frame
from gadlib.data.synth import (
    CATEGORIES,
    DEFECTS,
    apply_defect,
    contact_sheet,
    generate_suite,
    render_normal,
)
from gadlib.data.synth_painters import OBJECT_CATEGORIES, PAINTERS

SMALL = {"n_train": 2, "n_test_normal": 1, "n_test_per_defect": 1, "size": 64}


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    root = tmp_path_factory.mktemp("suite")
    return root, generate_suite(root, seed=3, **SMALL)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_public_names():
    assert len(CATEGORIES) >= 6 and len(DEFECTS) >= 5
    assert {"scratch", "crack", "hole", "stain", "missing_part"} <= set(DEFECTS)
    assert OBJECT_CATEGORIES and set(CATEGORIES) - OBJECT_CATEGORIES  # objects and textures


@pytest.mark.parametrize("category", CATEGORIES)
def test_render_normal_is_structured_rgb(category):
    image = render_normal(category, 64, np.random.default_rng(0))
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert image.std() > 3  # not a flat image
    # inspection imagery, not noise: neighbouring pixels are strongly correlated
    grey = image.astype(float).mean(axis=2)
    corr = np.corrcoef(grey[:, :-1].ravel(), grey[:, 1:].ravel())[0, 1]
    assert corr > 0.5, f"{category} looks like noise (neighbour correlation {corr:.2f})"


@pytest.mark.parametrize("category", CATEGORIES)
def test_render_normal_is_seeded_and_varies(category):
    first = render_normal(category, 48, np.random.default_rng(11))
    again = render_normal(category, 48, np.random.default_rng(11))
    other = render_normal(category, 48, np.random.default_rng(12))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    # same category structure: the mean colour moves only a little between normal images
    assert np.abs(first.mean(axis=(0, 1)) - other.mean(axis=(0, 1))).max() < 25


@pytest.mark.parametrize("category", CATEGORIES)
@pytest.mark.parametrize("defect", DEFECTS)
def test_apply_defect_mask_is_exactly_what_changed(category, defect):
    for seed in range(3):
        rng = np.random.default_rng(seed)
        normal = render_normal(category, 64, rng)
        defective, mask = apply_defect(normal, defect, rng, category=category)
        assert defective.shape == normal.shape and defective.dtype == np.uint8
        assert mask.shape == (64, 64) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        assert mask.sum() >= 4
        assert mask.mean() < 0.25, "defects should be local, not cover the image"
        changed = (defective != normal).any(axis=2)
        assert not (changed & (mask == 0)).any(), "a pixel outside the mask changed"
        assert changed[mask == 1].mean() > 0.85, "most mask pixels should have changed"


def test_apply_defect_is_seeded_and_leaves_input_alone():
    normal = render_normal("tile", 64, np.random.default_rng(0))
    before = normal.copy()
    a = apply_defect(normal, "crack", np.random.default_rng(5), "tile")
    b = apply_defect(normal, "crack", np.random.default_rng(5), "tile")
    c = apply_defect(normal, "crack", np.random.default_rng(6), "tile")
    assert np.array_equal(normal, before)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


@pytest.mark.parametrize("category", sorted(OBJECT_CATEGORIES))
def test_object_defects_land_on_the_object(category):
    rng = np.random.default_rng(1)
    normal = render_normal(category, 64, rng)
    _, foreground = PAINTERS[category](64, np.random.default_rng(1))
    near_object = ndimage.binary_dilation(foreground, iterations=3)
    for defect in ("scratch", "crack", "hole", "stain", "missing_part"):
        _, mask = apply_defect(normal, defect, rng, category=category)  # foreground estimated
        assert (mask.astype(bool) & ~near_object).sum() <= 0.1 * mask.sum(), defect


def test_missing_part_on_object_becomes_background():
    rng = np.random.default_rng(2)
    normal = render_normal("bottle_top", 64, rng)  # red cap on a light background
    defective, mask = apply_defect(normal, "missing_part", rng, category="bottle_top")
    background = np.median(normal[0], axis=0)
    filled = defective[mask == 1].astype(int)
    assert np.median(np.abs(filled - background).max(axis=1)) < 20  # edges are anti-aliased


def test_suite_table_and_counts(suite):
    root, frame = suite
    validate_frame(frame)
    assert list(frame.columns) == list(COLUMNS)
    per_category = 2 + 1 + len(DEFECTS)
    assert len(frame) == len(CATEGORIES) * per_category
    for category, rows in frame.groupby("category"):
        assert (rows["split"] == "train").sum() == 2
        test = rows[rows["split"] == "test"]
        assert (test["defect"] == "good").sum() == 1
        assert test[test["label"] == 1]["defect"].value_counts().to_dict() == {d: 1 for d in DEFECTS}
    assert (frame["label"] == (frame["defect"] != "good")).all()
    assert frame.loc[frame["label"] == 0, "mask_path"].isna().all()
    assert frame.loc[frame["label"] == 1, "mask_path"].notna().all()
    assert (frame["domain"] == "synthetic").all()
    assert all(Path(p).is_absolute() for p in frame["image_path"])


def test_suite_layout_is_mvtec(suite):
    root, frame = suite
    for row in frame.itertuples():
        rel = Path(row.image_path).relative_to(root)
        assert rel.parts[:3] == (row.category, row.split, row.defect) and rel.suffix == ".png"
        image = np.asarray(Image.open(row.image_path))
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        if row.label:
            mask_rel = Path(row.mask_path).relative_to(root)
            assert mask_rel == Path(row.category, "ground_truth", row.defect, rel.stem + "_mask.png")
            mask = np.asarray(Image.open(row.mask_path))
            assert mask.shape == image.shape[:2]
            assert set(np.unique(mask)) == {0, 255}
    manifest = json.loads((root / "suite.json").read_text())
    assert manifest["args"]["seed"] == 3 and len(manifest["rows"]) == len(frame)


def test_suite_is_byte_identical_for_same_seed_and_differs_otherwise(tmp_path):
    args = dict(categories=["screw", "woven_fabric"], defects=["hole", "stain"], **SMALL)
    generate_suite(tmp_path / "a", seed=7, **args)
    generate_suite(tmp_path / "b", seed=7, **args)
    generate_suite(tmp_path / "c", seed=8, **args)
    a, b, c = (_files(tmp_path / name) for name in "abc")
    assert a == b
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a if not k.endswith("_mask.png"))


def test_a_suite_made_on_the_worker_pool_is_the_same_files_and_table(tmp_path, monkeypatch):
    from gadlib import parallel

    args = dict(categories=["screw", "woven_fabric", "pcb"], defects=["hole", "stain"], seed=7, **SMALL)
    monkeypatch.setenv(parallel.WORKERS_ENV, "1")
    alone = generate_suite(tmp_path / "alone", **args)
    monkeypatch.setenv(parallel.WORKERS_ENV, "2")
    monkeypatch.setattr(parallel, "cores", lambda: 2)
    pooled = generate_suite(tmp_path / "pooled", **args)
    assert _files(tmp_path / "alone") == _files(tmp_path / "pooled")
    relative = [frame.assign(image_path=[str(Path(p).relative_to(root)) for p in frame["image_path"]])
                .drop(columns="mask_path") for frame, root in ((alone, tmp_path / "alone"), (pooled, tmp_path / "pooled"))]
    pd.testing.assert_frame_equal(*relative)
    assert parallel._POOLS        # it did run on the pool
    parallel.shutdown()


def test_splits_are_independent(tmp_path):
    args = dict(categories=["pcb"], n_test_normal=1, n_test_per_defect=2, size=64, seed=1)
    generate_suite(tmp_path / "small", n_train=1, defects=["scratch", "hole"], **args)
    generate_suite(tmp_path / "large", n_train=4, defects=["scratch", "hole"], **args)
    generate_suite(tmp_path / "fewer", n_train=1, defects=["hole"], **args)
    small, large, fewer = (_files(tmp_path / name) for name in ("small", "large", "fewer"))
    assert set(small) < set(large) and set(fewer) < set(small)
    assert all(small[k] == large[k] for k in small)  # more train images: nothing else moves
    assert all(fewer[k] == small[k] for k in fewer)  # one defect family fewer: the rest unchanged


def test_second_call_reuses_files(tmp_path):
    args = dict(categories=["washer"], defects=["crack"], **SMALL)
    first = generate_suite(tmp_path, **args)
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    second = generate_suite(tmp_path, **args)
    assert second.equals(first)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == mtimes


def test_changed_arguments_regenerate_and_drop_stale_files(tmp_path):
    args = dict(categories=["leather"], defects=["stain"], n_test_normal=1, n_test_per_defect=1, size=32)
    generate_suite(tmp_path, n_train=3, **args)
    frame = generate_suite(tmp_path, n_train=1, **args)
    on_disk = {str(p) for p in tmp_path.rglob("*.png")}
    listed = set(frame["image_path"]) | set(frame["mask_path"].dropna())
    assert on_disk == listed
    assert (frame["split"] == "train").sum() == 1


def test_incomplete_suite_is_regenerated(tmp_path):
    args = dict(categories=["tile"], defects=["hole"], **SMALL)
    frame = generate_suite(tmp_path, **args)
    Path(frame["image_path"].iloc[0]).unlink()
    generate_suite(tmp_path, **args)
    assert Path(frame["image_path"].iloc[0]).is_file()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"categories": ["screw", "airplane"]}, "valid category names"),
        ({"defects": ["scuff"]}, "valid defect names"),
        ({"categories": []}, "category"),
        ({"size": 16}, "size"),
        ({"n_train": -1}, "n_train"),
        ({"n_test_per_defect": 1.5}, "n_test_per_defect"),
        ({"seed": -3}, "seed"),
        ({"n_train": 0, "n_test_normal": 0, "n_test_per_defect": 0}, "nothing to generate"),
    ],
)
def test_generate_suite_rejects_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_suite(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())


def test_other_functions_reject_bad_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="brushed_metal"):
        render_normal("airplane", 64, rng)
    with pytest.raises(ValueError, match="size"):
        render_normal("tile", 31, rng)
    image = render_normal("tile", 64, rng)
    with pytest.raises(ValueError, match="scratch"):
        apply_defect(image, "scuff", rng)
    with pytest.raises(ValueError, match="uint8"):
        apply_defect(image.astype(np.float32), "hole", rng)


def test_contact_sheet(suite):
    _, frame = suite
    sheet = contact_sheet(frame, n_per_category=2, tile=40)
    assert sheet.dtype == np.uint8 and sheet.ndim == 3 and sheet.shape[2] == 3
    n_rows, n_cols = len(CATEGORIES), 2 + len(DEFECTS)
    assert sheet.shape[0] >= n_rows * 40 and sheet.shape[1] >= n_cols * 40
    assert ((sheet == (255, 0, 0)).all(axis=2)).sum() > 0  # mask outlines are drawn


def test_a_synth_spec_with_a_path_reads_the_suite_there(tmp_path):
    """`synth:PATH` must load a custom suite as generated, never regenerate the default one over it."""
    from gadlib.data.load import load_dataset

    small = generate_suite(tmp_path, categories=["tile"], defects=["hole"], n_train=2, n_test_normal=1,
                           n_test_per_defect=1, size=48, seed=4)
    name, frame = load_dataset(f"synth:{tmp_path}")
    assert name == "synth" and set(frame["category"]) == {"tile"} and len(frame) == len(small) == 4
    assert sorted(frame["image_path"]) == sorted(small["image_path"])
