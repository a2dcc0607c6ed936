"""Bad input gets a clear error naming the file and the fix, and nothing half-written (issue 6, robustness);
the same parameters and seed give byte-identical result files."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gadlib.data.folder import parse_folder
from gadlib.data.images import read_image, read_mask
from gadlib.methods import References, create_method


@pytest.fixture()
def suite(tmp_path):
    """A fresh copy of a tiny MVTec-layout suite (tile: 4 train, 2 good + 2 hole test images, 48 px)."""
    from gadlib.data.synth import generate_suite

    root = tmp_path / "suite"
    generate_suite(root, categories=["tile"], defects=["hole"], n_train=4, n_test_normal=2, n_test_per_defect=2,
                   size=48, seed=0)
    (root / "suite.json").unlink()              # a plain folder dataset from here on
    return root


def test_truncated_image_names_the_file_and_nothing_is_written(suite, tmp_path):
    from gadlib.study import run_evaluation

    broken = suite / "tile" / "test" / "good" / "001.png"
    broken.write_bytes(broken.read_bytes()[:200])
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"001\.png: cannot decode image .*replace or remove the corrupt file"):
        run_evaluation(f"folder:{suite}", "knn", shots=[1], seeds=[0], out=out,
                       method_params={"image_size": 48}, progress=False)
    assert not out.exists() and not list(tmp_path.glob(".run.*"))       # no run folder, no temporary left
    with pytest.raises(ValueError, match="cannot decode image"):
        read_image(broken)


def test_16_bit_palette_grey_and_rgba_images_read_as_the_same_rgb(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, size=(20, 30), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    Image.fromarray((grey.astype(np.uint16) * 257)).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")
    expected = np.repeat(grey[..., None], 3, axis=2)
    assert np.array_equal(np.asarray(read_image(tmp_path / "grey.png")), expected)
    # 16 bit is scaled to 8 bit, not clipped to white.
    assert np.array_equal(np.asarray(read_image(tmp_path / "grey16.png")), expected)
    rgb = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    palette = Image.fromarray(rgb).quantize(colors=16)
    palette.save(tmp_path / "palette.png")
    assert np.array_equal(np.asarray(read_image(tmp_path / "palette.png")), np.asarray(palette.convert("RGB")))
    rgba = np.concatenate([rgb, np.full((20, 30, 1), 128, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert np.array_equal(np.asarray(read_image(tmp_path / "rgba.png")), rgb)   # alpha dropped, colours kept


def test_masks_of_another_size_fail_and_grey_masks_are_binarised(suite):
    from gadlib.data.images import check_mask_sizes

    frame = parse_folder(suite)
    mask = Path(frame.loc[frame["label"] == 1, "mask_path"].iloc[0])
    Image.fromarray(np.zeros((40, 48), np.uint8)).save(mask)
    with pytest.raises(ValueError, match=rf"{mask.name}"):
        check_mask_sizes(frame)
    with pytest.raises(ValueError, match="mask is 48x40 but its image is 48x48"):
        read_mask(mask, (48, 48))
    values = np.zeros((48, 48), np.uint8)
    values[10:20, 10:20] = 128
    values[30, 30] = 1
    Image.fromarray(values).save(mask)
    assert np.array_equal(read_mask(mask, (48, 48)), (values > 0).astype(np.uint8))   # documented: > 0 is defect


def test_empty_folders_fail_and_hidden_files_are_ignored(suite, tmp_path):
    checkpoints = suite / "tile" / "train" / "good" / ".ipynb_checkpoints"
    checkpoints.mkdir()
    Image.new("RGB", (48, 48)).save(checkpoints / "000-checkpoint.png")
    Image.new("RGB", (48, 48)).save(suite / "tile" / "train" / "good" / ".hidden.png")
    (suite / "tile" / ".DS_Store").write_text("x")
    frame = parse_folder(suite)
    assert len(frame) == 8 and not frame["image_path"].str.contains(r"/\.").any()
    (tmp_path / "empty" / "cat" / "train" / "good").mkdir(parents=True)
    with pytest.raises(ValueError, match="empty category folder .*cat: no images"):
        parse_folder(tmp_path / "empty")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ValueError, match="no category folders under"):
        parse_folder(tmp_path / "nothing")


def test_duplicate_file_names_are_an_error(suite):
    good = suite / "tile" / "train" / "good"
    shutil.copy(good / "000.png", good / "000.jpg")
    with pytest.raises(ValueError, match=r"'000\.jpg' and '000\.png' have the same name"):
        parse_folder(suite)


def test_more_references_than_the_pool_holds(suite):
    from gadlib.data.references import sample_episode

    with pytest.raises(ValueError, match=r"k=5 normal references asked for, .*holds only 4; use --shots <= 4"):
        sample_episode(parse_folder(suite), "tile", 5, 0)


def test_a_checkpoint_of_another_backbone_is_refused(suite, tmp_path):
    from gadlib.methods.base import Method

    source = parse_folder(suite)
    path = create_method("vod", image_size=48, epochs=1, steps_per_epoch=2, simulated_per_category=2,
                         progress=False).fit(source).save(tmp_path / "vod")
    with pytest.raises(ValueError, match="checkpoint was trained on backbone features .* retrain"):
        Method.load(path, image_size=64, progress=False)


def test_nan_features_name_the_image_and_are_not_cached(tmp_path, monkeypatch):
    fresh = tmp_path / "fresh.png"          # bytes no other test has cached
    Image.fromarray(np.random.default_rng(7).integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(fresh)
    method = create_method("knn", image_size=48, progress=False)
    cache = method.feature_cache()
    backbone = cache.backbone
    original = type(backbone).__call__

    def poisoned(self, images):
        levels = original(self, images)
        levels[-1][0, 0, 0, 0] = float("nan")       # the first image of the batch
        return levels

    monkeypatch.setattr(type(backbone), "__call__", poisoned)
    first = str(fresh)
    with pytest.raises(ValueError, match=rf"{Path(first).name}: the backbone gave NaN or infinite features"):
        cache.ensure([first])
    monkeypatch.undo()
    from gadlib.cache import image_digest

    assert not cache._entry(image_digest(first)).exists()


def test_same_parameters_and_seed_give_byte_identical_results(tmp_path):
    """Twice from scratch (own caches, own training) -> the same result files, byte for byte."""
    import os
    import subprocess
    import sys

    script = tmp_path / "run.py"
    script.write_text('''
import sys
from gadlib.data.synth import generate_suite
from gadlib.study import run_evaluation
from gadlib.training import train_or_load
root, out = sys.argv[1], sys.argv[2]
generate_suite(root, categories=["tile", "leather"], defects=["hole"], n_train=5, n_test_normal=3,
               n_test_per_defect=3, size=48, seed=1)
model, _ = train_or_load("vod", f"synth:{root}", ["tile"], dict(image_size=48, epochs=2, steps_per_epoch=3,
                         simulated_per_category=3), progress=False)
for name, method in (("knn", "knn"), ("vod", model)):
    run_evaluation(f"synth:{root}", method, shots=[1, 2], seeds=[0, 1], out=f"{out}/{name}", categories=["leather"],
                   method_params={"image_size": 48}, abnormal_shots=1, abnormal_source="simulated", progress=False)
''')
    outputs = []
    for attempt in ("a", "b"):
        env = dict(os.environ, GADLIB_CACHE=str(tmp_path / f"cache_{attempt}"))
        subprocess.run([sys.executable, str(script), str(tmp_path / "suite"), str(tmp_path / attempt)], check=True,
                       env=env, capture_output=True)
        outputs.append(tmp_path / attempt)
    for name in ("knn", "vod"):
        for file in ("tidy.csv", "scores.csv.gz"):
            first, second = (o / name / file for o in outputs)
            assert first.read_bytes() == second.read_bytes(), f"{name}/{file} differs between two runs"
