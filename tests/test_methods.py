"""Tests of the method protocol, registry and scores (gadlib.methods.base) and the kNN baseline."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from gadlib.data.references import Episode
from gadlib.methods import Method, References, Scores, create_method, list_methods, register_method
from gadlib.methods.base import _REGISTRY
from gadlib.methods.knn import KNNResidual

SIZE = 64


# -- registry and protocol ------------------------------------------------------------------------------

def test_create_method_knn_and_unknown_names():
    method = create_method("knn", image_size=SIZE, sigma=2.0)
    assert isinstance(method, KNNResidual) and method.name == "knn"
    assert method.image_size == SIZE and method.sigma == 2.0
    assert "knn" in list_methods() and list_methods() == sorted(list_methods())
    with pytest.raises(ValueError, match=r"unknown method 'patchcore'.*knn"):
        create_method("patchcore")
    with pytest.raises(TypeError):
        create_method("knn", no_such_parameter=1)


@pytest.fixture
def scratch_registry():
    before = dict(_REGISTRY)
    yield
    _REGISTRY.clear()
    _REGISTRY.update(before)


def test_register_method_twice(scratch_registry):
    @register_method("scratch_method")
    class First(Method):
        def __init__(self, alpha: float = 1.0):
            self.alpha = alpha

    assert register_method("scratch_method")(First) is First   # same class again: fine
    assert create_method("scratch_method", alpha=3.0).alpha == 3.0
    with pytest.raises(ValueError, match=r"'scratch_method' is already registered by First"):
        @register_method("scratch_method")
        class Second(Method):
            pass
    with pytest.raises(ValueError, match="already registered"):
        register_method("knn")(First)
    assert _REGISTRY["knn"] is KNNResidual


def test_get_params_round_trip():
    method = create_method("knn", image_size=SIZE, levels=(2, 3), metric="cosine", neighbourhood=1,
                           reduction="top1%", grid=6)
    params = method.get_params()
    assert params["levels"] == (2, 3) and params["metric"] == "cosine" and params["grid"] == 6
    assert set(params) == {"backbone", "levels", "image_size", "grid", "neighbourhood", "metric", "sigma",
                           "level_matching", "reduction", "vod_channel", "search", "query_batch", "backbone_weights",
                           "fusion", "cache_dir", "device", "progress"}
    assert create_method("knn", **params).get_params() == params
    assert KNNResidual().get_params() != params


def test_default_predict_shots_uses_the_first_k(scratch_registry):
    @register_method("scratch_counter")
    class Counter(Method):
        """Scores every query by the number of normal references it saw."""

        def __init__(self):
            self.seen: list[list[str]] = []

        def predict(self, queries, references, with_pixel=True):
            self.seen.append(list(references.normal))
            return Scores(np.full(len(queries), float(len(references.normal))))

    method = create_method("scratch_counter")
    out = method.predict_shots(["q1", "q2"], References(["a", "b", "c", "d"], ["x"], [None]), [4, 1, 2, 2])
    assert sorted(out) == [1, 2, 4]
    assert method.seen == [["a"], ["a", "b"], ["a", "b", "c", "d"]]
    assert out[2].image.tolist() == [2.0, 2.0]
    with pytest.raises(NotImplementedError):
        Method().predict(["q"], References(["a"]))
    assert Method().fit() is not None


def test_references_from_episode():
    episode = Episode(target="d/c", normal_refs=["n1", "n2"], abnormal_refs=["a1"], abnormal_masks=["m1"],
                      queries=["q"], seed=0)
    refs = References.from_episode(episode)
    assert refs == References(["n1", "n2"], ["a1"], ["m1"])
    refs.normal.append("n3")
    assert episode.normal_refs == ["n1", "n2"], "References must copy, not alias, the episode lists"


def test_scores_validation():
    scores = Scores([1, 2, 3], np.zeros((3, 4, 4)))
    assert scores.image.dtype == np.float64 and scores.image.shape == (3,)
    assert Scores(np.zeros(2)).pixel is None
    with pytest.raises(ValueError, match=r"image must be \(N,\)"):
        Scores(np.zeros((2, 1)))
    with pytest.raises(ValueError, match=r"pixel must be \(N, H, W\) with N=3"):
        Scores(np.zeros(3), np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="pixel must be"):
        Scores(np.zeros(3), np.zeros((3, 4)))


# -- the kNN baseline on tiny synthetic images --------------------------------------------------------

def _texture(seed: int) -> np.ndarray:
    """Vertical stripes with a random phase plus mild smooth noise: one 'category', many images."""
    rng = np.random.default_rng(seed)
    x = np.arange(SIZE)[None, :, None]
    stripes = 0.5 + 0.25 * np.sin(x / 2.0 + rng.uniform(0, 2 * np.pi)) * np.array([1.0, 0.8, 0.6])
    noise = ndimage.gaussian_filter(rng.standard_normal((SIZE, SIZE, 3)), (1, 1, 0)) * 0.05
    return np.clip((np.broadcast_to(stripes, (SIZE, SIZE, 3)) + noise) * 255, 0, 255).astype(np.uint8)


SQUARE = (slice(4, 28), slice(4, 28))


@pytest.fixture(scope="module")
def knn_data(tmp_path_factory):
    """Reference and query files, and a cache folder for this module (never ~/.cache)."""
    root = tmp_path_factory.mktemp("knn")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GADLIB_CACHE", str(root / "env_cache"))
        refs = []
        for i in range(4):
            path = root / f"ref{i}.png"
            Image.fromarray(_texture(i)).save(path)
            refs.append(str(path))
        clean = root / "clean.png"
        Image.fromarray(_texture(10)).save(clean)
        defect = _texture(11)
        defect[SQUARE] = 255
        bright = root / "bright.png"
        Image.fromarray(defect).save(bright)
        # A byte-identical copy of ref3 under another name: a reference itself may never be a query.
        twin = root / "twin3.png"
        Image.fromarray(_texture(3)).save(twin)
        yield {"refs": refs, "clean": str(clean), "bright": str(bright), "twin3": str(twin),
               "cache": str(root / "cache")}


def _knn(data, **params) -> KNNResidual:
    return create_method("knn", image_size=SIZE, cache_dir=data["cache"], device="cpu", progress=False, **params)


def test_knn_identical_query_scores_zero_and_lowest(knn_data):
    method = _knn(knn_data)
    queries = [knn_data["twin3"], knn_data["clean"], knn_data["bright"]]
    scores = method.predict(queries, References(knn_data["refs"]))
    assert scores.image.shape == (3,) and scores.pixel.shape == (3, SIZE, SIZE)
    assert scores.pixel.dtype == np.float32
    # the stored features are float16 and the l2 kernel expands |q|^2 + |b|^2 - 2 q.b: "near" zero
    assert scores.pixel[0].max() < 0.01 * scores.pixel[1].max()
    assert scores.pixel[0].min() >= 0
    assert scores.image.argmin() == 0
    assert scores.image[0] == pytest.approx(scores.pixel[0].max())
    with pytest.raises(ValueError, match="also queries"):
        method.predict([knn_data["refs"][2]], References(knn_data["refs"]))


def test_knn_bright_square_scores_higher_and_is_localised(knn_data):
    for metric in ("l2", "cosine"):
        method = _knn(knn_data, metric=metric)
        scores = method.predict([knn_data["clean"], knn_data["bright"]], References(knn_data["refs"]))
        assert scores.image[1] > 1.5 * scores.image[0], metric
        y, x = np.unravel_index(scores.pixel[1].argmax(), scores.pixel[1].shape)
        # the maps put each cell on its receptive field's measured centre (Backbone.level_offsets)
        assert SQUARE[0].start <= y < SQUARE[0].stop and SQUARE[1].start <= x < SQUARE[1].stop, (metric, y, x)
        # the whole square scores above every pixel of the clean image, and above the far corner
        clean_map, bright_map = scores.pixel
        assert bright_map[SQUARE].min() > clean_map.max(), metric
        assert bright_map[SQUARE].mean() > 1.2 * bright_map[40:, 40:].mean(), metric


def test_knn_predict_shots_equals_separate_predicts_and_is_monotone(knn_data):
    method = _knn(knn_data)
    queries = [knn_data["clean"], knn_data["bright"], knn_data["twin3"]]
    refs = References(knn_data["refs"])
    shots = method.predict_shots(queries, refs, [4, 1, 2])
    assert sorted(shots) == [1, 2, 4]
    for k in (1, 2, 4):
        alone = method.predict(queries, References(knn_data["refs"][:k]))
        # float32 matmuls of other shapes round differently: 1e-5 relative on these O(10) scores...
        np.testing.assert_allclose(shots[k].pixel[:2], alone.pixel[:2], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(shots[k].image[:2], alone.image[:2], rtol=1e-5, atol=1e-5)
        # ...and a larger absolute slack where the true distance is ~0 (ref3 against itself at k=4):
        # sqrt(|q|^2 + |b|^2 - 2 q.b) amplifies float32 cancellation near zero
        np.testing.assert_allclose(shots[k].pixel[2], alone.pixel[2], rtol=1e-5, atol=0.05)
    # more references never raise a pixel score (running minimum, then a non-negative linear map)
    assert (shots[2].pixel <= shots[1].pixel + 1e-5).all()
    assert (shots[4].pixel[:2] <= shots[2].pixel[:2] + 1e-5).all()
    assert (shots[4].image <= shots[1].image + 1e-5).all()
    # ref3 joins at k=4: its own map collapses to (near) zero
    assert shots[4].pixel[2].max() < 0.01 * shots[2].pixel[2].max()
    assert (shots[4].pixel[2] <= shots[2].pixel[2]).all()
    without_pixels = method.predict_shots(queries, refs, [2], with_pixel=False)[2]
    assert without_pixels.pixel is None
    np.testing.assert_allclose(without_pixels.image, shots[2].image, rtol=1e-6)


def test_knn_bad_shots(knn_data):
    method = _knn(knn_data)
    with pytest.raises(ValueError, match="shots"):
        method.predict_shots([knn_data["clean"]], References(knn_data["refs"][:2]), [3])
    with pytest.raises(ValueError, match="shots"):
        method.predict_shots([knn_data["clean"]], References(knn_data["refs"]), [0, 1])
    with pytest.raises(ValueError, match="shots"):
        method.predict([knn_data["clean"]], References([]))


def test_knn_query_batches_do_not_change_scores(knn_data):
    queries = [knn_data["clean"], knn_data["bright"], knn_data["twin3"]]
    refs = References(knn_data["refs"][:2])
    together = _knn(knn_data).predict(queries, refs)
    one_by_one = _knn(knn_data, query_batch=1).predict(queries, refs)
    np.testing.assert_allclose(one_by_one.pixel[:2], together.pixel[:2], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(one_by_one.pixel[2], together.pixel[2], atol=0.05)  # ~0: see above


def test_knn_save_load_round_trip(knn_data, tmp_path):
    method = _knn(knn_data, sigma=2.0, reduction="top1%", levels=(2, 3))
    path = method.save(tmp_path / "ckpt" / "knn", note="test")
    meta = json.loads(Path(path).with_suffix(".json").read_text())
    assert meta["method"] == "knn" and meta["record"] == {"note": "test"}
    assert meta["params"]["sigma"] == 2.0 and meta["params"]["levels"] == [2, 3]
    loaded = Method.load(path)
    assert isinstance(loaded, KNNResidual)
    assert {k: v for k, v in loaded.get_params().items() if k != "levels"} == \
        {k: v for k, v in method.get_params().items() if k != "levels"}
    queries = [knn_data["clean"], knn_data["bright"]]
    refs = References(knn_data["refs"][:2])
    a, b = method.predict(queries, refs), loaded.predict(queries, refs)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.pixel, b.pixel)
    assert Method.load(path, sigma=0.0).sigma == 0.0
    with pytest.raises(FileNotFoundError, match="metadata"):
        Method.load(tmp_path / "nothing")


def test_knn_search_variants(knn_data):
    """faiss gives the exact search's scores; float16 banks move them by float16 rounding only."""
    pytest.importorskip("faiss")
    queries = [knn_data["clean"], knn_data["bright"]]
    refs = References(knn_data["refs"])
    exact = _knn(knn_data).predict_shots(queries, refs, [1, 4])
    for search, tolerance in (("faiss", 1e-4), ("float16", 2e-3)):
        other = _knn(knn_data, search=search).predict_shots(queries, refs, [1, 4])
        for k in (1, 4):
            np.testing.assert_allclose(other[k].pixel, exact[k].pixel, rtol=tolerance, atol=tolerance)
    with pytest.raises(ValueError, match="search"):
        _knn(knn_data, search="annoy").predict(queries, refs)


def test_search_is_a_scoring_parameter_outside_the_checkpoint_key():
    from gadlib.training import checkpoint_path

    params = create_method("resad").get_params()
    assert "search" in create_method("resad").scoring_params
    assert checkpoint_path("resad", dict(params, search="faiss"), "synth", ["tile"], "key") == \
        checkpoint_path("resad", params, "synth", ["tile"], "key")


def test_needs_training_tells_trained_methods_from_training_free_ones():
    from gadlib.methods import needs_training

    assert [needs_training(n) for n in ("knn", "resad", "inctrl", "nagl", "vod")] == [False, True, True, True, True]
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        needs_training("nope")


def test_knn_level_matching_each_averages_the_levels_own_nearest_distances(knn_data):
    import torch

    method = _knn(knn_data, metric="cosine", level_matching="each")
    refs, queries = knn_data["refs"][:2], [knn_data["clean"], knn_data["bright"]]
    method.feature_cache().ensure(refs + queries)
    bank, features = method.patch_features(refs), method.patch_features(queries)
    cells = bank.shape[-2] * bank.shape[-1]
    got = method._nearest_first_k(features, bank.permute(0, 2, 3, 1).reshape(-1, bank.shape[1]), cells)
    # brute force: per level, 1 - cosine to the nearest patch of the first k references, then the mean over levels
    expected = []
    for q, b in zip(features.split(method.feature_cache().backbone.channels, dim=1),
                    bank.split(method.feature_cache().backbone.channels, dim=1)):
        q = torch.nn.functional.normalize(q.permute(0, 2, 3, 1).reshape(-1, q.shape[1]).double(), dim=1)
        b = torch.nn.functional.normalize(b.permute(0, 2, 3, 1).reshape(-1, b.shape[1]).double(), dim=1)
        distance = 1 - q @ b.T
        expected.append(torch.stack([distance[:, :cells * k].min(1).values for k in (1, 2)], dim=1))
    torch.testing.assert_close(got.double(), torch.stack(expected).mean(0), atol=1e-5, rtol=1e-4)
    joint = _knn(knn_data, metric="cosine").predict(queries, References(refs)).image
    assert not np.allclose(method.predict(queries, References(refs)).image, joint)
    with pytest.raises(ValueError, match="level_matching"):
        _knn(knn_data, level_matching="mean").predict(queries, References(refs))
