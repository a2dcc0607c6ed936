"""The image-level residual method, label-free fusion as a hyper-parameter, the named baselines and the
source-side checks that choose them (global anomalies simulated on source images)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from gadlib.baselines import BASELINES, BEST_TRAINING_FREE, create_baseline
from gadlib.data.simulate import GLOBAL_CHANGES, global_change
from gadlib.kernels.fusion import fuse
from gadlib.methods import References, create_method, needs_training
from gadlib.methods.base import method_class
from gadlib.methods.features import FUSIONS
from gadlib.validation import defect_family, family_table, with_global_anomalies
from test_methods import SIZE, _texture      # the same striped texture images as the kNN tests


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("baselines")
    paths = {}
    for name, array in [*((f"ref{i}", _texture(i)) for i in range(4)), ("clean", _texture(10)),
                        ("twin3", _texture(3)), ("flat", global_change(_texture(11), "flatter"))]:
        paths[name] = str(root / f"{name}.png")
        Image.fromarray(array).save(paths[name])
    paths["refs"] = [paths[f"ref{i}"] for i in range(4)]
    paths["cache"] = str(root / "cache")
    return paths


def _method(images, name="knn", **params):
    return create_method(name, image_size=SIZE, cache_dir=images["cache"], device="cpu", progress=False, **params)


# -- the image-level residual as a method -------------------------------------------------------------------

def test_image_residual_method_scores_a_reference_twin_zero_and_a_flatter_image_higher(images):
    method = _method(images, "image_residual")
    scores = method.predict_shots([images["twin3"], images["clean"], images["flat"]], References(images["refs"]),
                                  [1, 4])
    assert not needs_training("image_residual")
    assert scores[4].image[0] == pytest.approx(0.0, abs=1e-9)      # ref3 is among the first 4 references
    assert scores[1].image[0] > 0                                     # ...but not the first one
    assert scores[4].image[2] > scores[4].image[1]
    # global evidence has no place: every pixel of a map is the image score
    np.testing.assert_allclose(scores[4].pixel, np.broadcast_to(scores[4].image[:, None, None], (3, SIZE, SIZE)),
                               rtol=1e-6)


# -- fusion as a hyper-parameter of every method -----------------------------------------------------------

def test_every_method_takes_fusion_and_a_trained_one_may_change_it_after_fitting():
    for name in ("knn", "resad", "inctrl", "nagl", "vod"):
        cls = method_class(name)
        assert cls().fusion == "none", name
        if needs_training(name):
            assert "fusion" in cls.scoring_params, name


def test_fusion_none_changes_nothing_and_global_fuses_the_channels(images):
    plain = _method(images, metric="cosine", reduction="top1%")
    fused = plain.with_params(fusion="global")
    queries = [images["clean"], images["flat"]]
    refs = References(images["refs"])
    own = plain.predict_shots(queries, refs, [1, 4])
    out = fused.predict_shots(queries, refs, [1, 4])
    np.testing.assert_array_equal(out[1].image, own[1].image)          # k = 1: nothing to calibrate with
    np.testing.assert_array_equal(out[4].pixel, own[4].pixel)          # maps stay the method's own
    channels = plain.fusion_channels(queries, refs, own)
    assert sorted(channels) == [4]
    (q_own, n_own), (q_global, n_global) = channels[4]
    np.testing.assert_allclose(q_own.numpy(), own[4].image)
    assert n_own.shape == n_global.shape == (4,)
    # the leave-one-out normal scores are the method's own scores of each reference against the other three
    held = plain.predict([images["ref2"]], References([images["ref0"], images["ref1"], images["ref3"]]))
    assert float(n_own[2]) == pytest.approx(float(held.image[0]))
    np.testing.assert_allclose(out[4].image, fuse(channels[4], **FUSIONS["global"]).numpy())
    with pytest.raises(ValueError, match="fusion must be one of"):
        _method(images, fusion="mean").predict(queries, refs)


# -- global anomalies on source images -------------------------------------------------------------------

def test_global_changes_by_their_definition():
    image = _texture(5)
    flat = global_change(image, "flatter")
    assert flat.std() == pytest.approx(0.85 * image.std(), rel=0.02)
    blurred = global_change(image, "blurred")
    assert np.abs(np.diff(blurred.astype(float), axis=1)).mean() < np.abs(np.diff(image.astype(float), axis=1)).mean()
    coarser = global_change(image, "coarser")
    assert coarser.shape == image.shape and coarser.dtype == np.uint8 and not np.array_equal(coarser, image)
    np.testing.assert_array_equal(global_change(image, "coarser"), coarser)     # deterministic
    with pytest.raises(ValueError, match="unknown global change"):
        global_change(image, "darker")


def test_with_global_anomalies_adds_one_labelled_copy_per_normal_test_image_and_kind(tiny_suite, tmp_path):
    _, frame = tiny_suite
    out = with_global_anomalies(frame, ["tile"], tmp_path)
    tile = frame[frame["category"] == "tile"]
    normals = tile[(tile["split"] == "test") & (tile["label"] == 0)]
    added = out.iloc[len(tile):]
    assert len(out) == len(tile) + len(GLOBAL_CHANGES) * len(normals)
    assert set(added["label"]) == {1} and added["mask_path"].isna().all()
    assert sorted(set(added["defect"])) == sorted(f"global: {kind}" for kind in GLOBAL_CHANGES)
    assert set(out["category"]) == {"tile"}
    files = {p: (tmp_path / p).stat().st_mtime_ns for p in [f.name for f in tmp_path.iterdir()]}
    again = with_global_anomalies(frame, ["tile"], tmp_path)
    assert again["image_path"].tolist() == out["image_path"].tolist()
    assert {p: (tmp_path / p).stat().st_mtime_ns for p in files} == files      # nothing rewritten
    with pytest.raises(ValueError, match="no rows"):
        with_global_anomalies(frame, ["nothing"], tmp_path)


def test_defect_family_and_family_table_by_hand():
    assert defect_family(pd.Series(["good", "scratch", "global: flatter"])).tolist() == ["good", "local", "global"]
    rows = []
    for seed in (0, 1):
        for path, label, defect, score in [("n1", 0, "good", 0.1), ("n2", 0, "good", 0.3), ("l1", 1, "hole", 0.2),
                                           ("g1", 1, "global: blurred", 0.9)]:
            rows.append(dict(method="rule", shots=2, seed=seed, category="tile", image_path=path, label=label,
                             defect=defect, score=score))
    table = family_table(pd.DataFrame(rows))
    # local: 0.2 beats one of the two normals -> 50; global: 0.9 beats both -> 100
    assert table.loc[("rule", "local"), 2] == 50.0 and table.loc[("rule", "global"), 2] == 100.0


# -- named baselines --------------------------------------------------------------------------------------

def test_named_baselines():
    assert BEST_TRAINING_FREE in BASELINES
    best = create_baseline(BEST_TRAINING_FREE, progress=False)
    assert best.name == "knn" and best.fusion == "global" and best.metric == "cosine" and best.reduction == "top1%"
    assert create_baseline("kNN (L2, max)").get_params() == create_method("knn").get_params()
    assert create_baseline("image residual").name == "image_residual"
    for name, (method, _) in BASELINES.items():
        assert not needs_training(method), name
    with pytest.raises(ValueError, match="unknown baseline"):
        create_baseline("PatchCore")
