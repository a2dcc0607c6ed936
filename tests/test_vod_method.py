"""VOD inside the residual methods, the `vod` method, and the gap views of the three-gap study."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from gadlib import gaps
from gadlib.kernels.vod import channel_vod_grid, position_vod, position_vod_any
from gadlib.methods import References, create_method

SMALL = dict(image_size=96, epochs=2, steps_per_epoch=20, simulated_per_category=6, progress=False)


# -- kernels on method shapes ------------------------------------------------------------------------

def test_grid_and_any_shape_readings_match_the_flat_kernels():
    torch.manual_seed(0)
    grid = torch.randn(2, 5, 3, 4)
    assert channel_vod_grid(grid, "none") is grid
    a = channel_vod_grid(grid, "gaussian")
    assert a.shape == grid.shape
    # Per channel over the 12 positions of each image: a per-image, per-channel positive affine change
    # (a "style" or domain shift) leaves reading (A) unchanged.
    scale, shift = torch.rand(2, 5, 1, 1) + 0.5, torch.randn(2, 5, 1, 1)
    torch.testing.assert_close(channel_vod_grid(grid * scale + shift, "gaussian"), a)
    # Reading (B) with channels on dim 1 of an NCHW residual = the flat kernel on (N*H*W, C).
    b = position_vod_any(grid, "magnitude", channel_dim=1)
    flat = position_vod(grid.permute(0, 2, 3, 1).reshape(-1, 5), "magnitude")
    torch.testing.assert_close(b.permute(0, 2, 3, 1).reshape(-1, 5), flat)
    # Magnitude and signed keep every position's norm: a distance score cannot see them.
    for mode in ("magnitude", "signed"):
        torch.testing.assert_close(position_vod_any(grid, mode, 1).norm(dim=1), grid.norm(dim=1))
    assert position_vod_any(grid, "none", 1) is grid


@pytest.mark.parametrize("name", ["knn", "resad", "inctrl", "nagl", "vod"])
def test_every_method_refuses_an_unknown_reading(name, tiny_suite):
    root, frame = tiny_suite
    refs = References(frame[(frame["split"] == "train") & (frame["category"] == "tile")]["image_path"].tolist()[:1])
    queries = frame[(frame["split"] == "test") & (frame["category"] == "tile")]["image_path"].tolist()[:1]
    method = create_method(name, image_size=64, vod_channel="sideways", progress=False)
    with pytest.raises(ValueError, match="vod_channel must be one of"):
        method.fit(frame) if name != "knn" else method.predict(queries, refs)
    if name in ("resad", "nagl", "vod"):
        with pytest.raises(ValueError, match="vod_position must be one of"):
            create_method(name, image_size=64, vod_position="upside", progress=False).fit(frame)


# -- the vod method --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gap_suite(tmp_path_factory):
    from gadlib.data.synth import generate_suite

    root = tmp_path_factory.mktemp("vod_suite")
    return generate_suite(root, categories=["tile", "wood_grain", "leather"], defects=["scratch", "hole", "stain"],
                          n_train=8, n_test_normal=6, n_test_per_defect=4, size=96, seed=3)


@pytest.fixture(scope="module")
def trained_vod(gap_suite, tmp_path_factory):
    source = gap_suite[gap_suite["category"] != "leather"]
    model = create_method("vod", **SMALL).fit(source)
    return model, model.save(tmp_path_factory.mktemp("vod_ckpt") / "vod")


def _episode(frame, category="leather", k=4, m=0, seed=0):
    from gadlib.data.references import sample_episode

    return sample_episode(frame, category, k, seed, abnormal_shots=m)


def test_distance_scoring_is_knn_and_reading_b_cannot_change_it(gap_suite):
    episode = _episode(gap_suite)
    refs = References.from_episode(episode)
    knn = create_method("knn", image_size=96, progress=False).predict(episode.queries, refs)
    plain = create_method("vod", image_size=96, scoring="distance", vod_channel="none", vod_position="none",
                          progress=False).predict(episode.queries, refs)
    np.testing.assert_allclose(plain.image, knn.image, rtol=1e-5)
    np.testing.assert_allclose(plain.pixel, knn.pixel, rtol=1e-4, atol=1e-5)
    for mode in ("magnitude", "signed"):
        sorted_ = create_method("vod", image_size=96, scoring="distance", vod_channel="none", vod_position=mode,
                                progress=False).predict(episode.queries, refs)
        np.testing.assert_allclose(sorted_.image, plain.image, rtol=1e-5)
    # Reading (A) does change it, and kNN with reading (A) is the same distance.
    a = create_method("vod", image_size=96, scoring="distance", vod_channel="gaussian", vod_position="none",
                      progress=False).predict(episode.queries, refs)
    knn_a = create_method("knn", image_size=96, vod_channel="gaussian", progress=False).predict(episode.queries, refs)
    np.testing.assert_allclose(a.image, knn_a.image, rtol=1e-5)
    assert not np.allclose(a.image, plain.image)


def test_synthetic_references_are_made_from_the_normal_references_deterministically(gap_suite, trained_vod):
    model, _ = trained_vod
    refs = References(_episode(gap_suite).normal_refs)
    paths, masks = model._abnormal_references(refs, 2)
    assert len(paths) == model.synthetic_references and all(m is not None for m in masks)
    again, _ = model._abnormal_references(refs, 2)
    assert again == paths
    from PIL import Image

    first = np.asarray(Image.open(paths[0]))
    assert np.asarray(Image.open(model._abnormal_references(refs, 2)[0][0])).tobytes() == first.tobytes()
    # k = 1 draws every synthetic reference from the first normal one: other sources, other files.
    assert set(model._abnormal_references(refs, 1)[0]).isdisjoint(paths)
    mask = np.asarray(Image.open(masks[0]))
    assert set(np.unique(mask)) <= {0, 255} and (mask > 0).any()
    # An episode's own abnormal references are used as they are.
    own = References(refs.normal, ["/x/a.png"], ["/x/a_mask.png"])
    assert model._abnormal_references(own, 2) == (["/x/a.png"], ["/x/a_mask.png"])


def test_vod_scores_are_consistent_over_k_and_round_trip(gap_suite, trained_vod):
    from gadlib.methods.base import Method

    model, path = trained_vod
    episode = _episode(gap_suite)
    refs = References.from_episode(episode)
    together = model.predict_shots(episode.queries, refs, [1, 2, 4])
    for k in (1, 2, 4):
        alone = model.predict(episode.queries, References(refs.normal[:k]))
        np.testing.assert_allclose(together[k].image, alone.image, rtol=1e-5)
    loaded = Method.load(path, progress=False)
    np.testing.assert_allclose(loaded.predict(episode.queries, refs).image, together[4].image, rtol=1e-6)
    both = model.with_params(scoring="both").predict(episode.queries, refs).image
    head = model.with_params(scoring="head").predict(episode.queries, refs).image
    references = model.with_params(scoring="references").predict(episode.queries, refs).image
    assert (0 <= head).all() and (head <= 1).all() and (0 <= references).all() and (references <= 1).all()
    assert not np.allclose(head, references)
    # The image score is the max of the smoothed map of (head + references) / 2, so it is at most
    # the mean of the two maxima.
    assert (both <= (head + references) / 2 + 1e-6).all()
    # gated = |r| x the mean of the two, patch by patch
    torch.manual_seed(0)
    res, abnormal = torch.randn(50, model.input_mean_.shape[0]), torch.randn(7, model.input_mean_.shape[0])
    patch = {mode: model.with_params(scoring=mode)._patch_scores(res, abnormal) for mode in ("gated", "both", "distance")}
    torch.testing.assert_close(patch["gated"], patch["distance"] * patch["both"])
    torch.testing.assert_close(patch["distance"], res.norm(dim=1))
    assert np.allclose(together[4].image, model.with_params(scoring="gated").predict(episode.queries, refs).image)
    with pytest.raises(ValueError, match="also queries"):
        model.predict(episode.queries[:2] + [refs.normal[0]], refs)
    with pytest.raises(ValueError, match="fit a new model"):
        model.with_params(vod_position="none")
    with pytest.raises(RuntimeError, match="not fitted"):
        create_method("vod", image_size=96, progress=False).predict(episode.queries, refs)


def test_tiny_vod_train_and_evaluate_end_to_end_on_an_unseen_category(gap_suite, trained_vod):
    """End to end on an unseen category with cut-and-paste references. Without decomposition the
    pipeline ranks the unseen defects well; with both readings (the default) it must produce valid, non-negative
    scores (on this tiny suite it ranks them worse -- the study measures where the readings help; whether the
    learned parts earn their place is tests/test_learning.py's question)."""
    from gadlib.study import evaluate

    model, _ = trained_vod
    assert [h["epoch"] for h in model.fit_record_["history"]] == [1, 2]
    plain = create_method("vod", vod_channel="none", vod_position="none", **SMALL).fit(
        gap_suite[gap_suite["category"] != "leather"])
    for method, floor in ((plain, 0.75), (model, None)):
        result = evaluate(gap_suite, method, "gap", shots=[2, 4], seeds=[0, 1, 2], categories=["leather"],
                          abnormal_shots=1, abnormal_source="simulated", progress=False)
        auroc = result.tidy[result.tidy["metric"] == "image_auroc"]["value"]
        assert len(auroc) == 6 and auroc.between(0, 1).all(), auroc.tolist()
        assert floor is None or auroc.mean() > floor, auroc.tolist()
        scores = result.scores
        assert (scores["score"] >= 0).all() and np.isfinite(scores["score"]).all()


def test_reading_b_changes_what_resad_and_nagl_see(gap_suite):
    episode = _episode(gap_suite, m=1)
    refs = References.from_episode(episode)
    source = gap_suite[gap_suite["category"] != "leather"]
    small = dict(SMALL, epochs=1, steps_per_epoch=3)
    for name in ("resad", "nagl"):
        plain = create_method(name, **small).fit(source).predict(episode.queries, refs).image
        sorted_ = create_method(name, vod_position="magnitude", **small).fit(source).predict(episode.queries, refs).image
        assert np.isfinite(sorted_).all() and not np.allclose(plain, sorted_), name
    # NAGL's normal map reads features, not residuals: reading (B) leaves it alone, reading (A) does not.
    normal = create_method("nagl", mode="normal_only", image_size=96, progress=False)
    base = normal.predict(episode.queries, refs).image
    assert np.allclose(normal.with_params(vod_position="magnitude").predict(episode.queries, refs).image, base)
    assert not np.allclose(normal.with_params(vod_channel="gaussian").predict(episode.queries, refs).image, base)


def test_checkpoint_keys_of_earlier_configurations_do_not_change():
    from gadlib.training import checkpoint_path

    params = create_method("resad", progress=False).get_params()
    old = {k: v for k, v in params.items() if not k.startswith("vod_")}
    assert checkpoint_path("resad", params, "synth", ["tile"], "key") == checkpoint_path("resad", old, "synth", ["tile"], "key")
    assert checkpoint_path("resad", dict(params, vod_position="magnitude"), "synth", ["tile"], "key") != \
        checkpoint_path("resad", params, "synth", ["tile"], "key")
    assert checkpoint_path("resad", params, "synth", None, "key", defects=["hole"]) != \
        checkpoint_path("resad", params, "synth", None, "key")


# -- gap views -------------------------------------------------------------------------------------

def _table():
    rows = []
    for domain in ("mono", "poly"):
        for split, label, defect, n in (("train", 0, "good", 3), ("test", 0, "good", 2), ("test", 1, "crack", 2),
                                        ("test", 1, "stain", 1)):
            rows += [dict(image_path=f"/{domain}/{split}/{defect}{i}.png", label=label, defect=defect, split=split,
                          domain=domain, category="cell", mask_path=None) for i in range(n)]
    return pd.DataFrame(rows)


def test_gap_views_keep_what_they_say():
    table = _table()
    cracks = gaps.keep_defects(table, ["crack"])
    assert set(cracks.loc[cracks["label"] == 1, "defect"]) == {"crack"}
    assert (cracks["label"] == 0).sum() == (table["label"] == 0).sum()
    assert gaps.keep_defects(table, None) is table
    with pytest.raises(ValueError, match=r"defect types \['dent'\] are not in this table"):
        gaps.keep_defects(table, ["dent"])
    train_normals = gaps.normal_splits(table, ["train"])
    assert set(train_normals.loc[train_normals["label"] == 0, "split"]) == {"train"}
    assert (train_normals["label"] == 1).sum() == (table["label"] == 1).sum()
    view = gaps.cross_domain(table, "mono", "poly")
    assert set(view.loc[view["split"] == "train", "domain"]) == {"mono"}
    assert set(view.loc[view["split"] == "test", "domain"]) == {"poly"}
    assert len(view) == 3 + 5
    with pytest.raises(ValueError, match="domain 'cz' is not in this table"):
        gaps.cross_domain(table, "cz", "poly")


def test_source_restricted_to_defect_types_and_train_normals(tiny_suite):
    from gadlib.training import load_source

    root, _ = tiny_suite
    source = load_source(f"synth:{root}", ["tile"], defects=["hole"], normal_splits=["train"])
    assert set(source.loc[source["label"] == 1, "defect"]) == {"hole"}
    assert set(source.loc[source["label"] == 0, "split"]) == {"train"}
    with pytest.raises(ValueError, match="not in this table"):
        load_source(f"synth:{root}", ["tile"], defects=["dent"])


# -- the residual-space explorer -------------------------------------------------------------------

def test_separability_known_answers_and_grouping():
    from gadlib.explore import separability, transfer_auroc

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 10)
    y = np.repeat(np.arange(40) % 2, 10)
    noise = rng.normal(size=(400, 6))
    assert abs(separability(noise, y, groups) - 0.5) < 0.15
    shifted = noise.copy()
    shifted[:, 0] += 4 * y
    assert separability(shifted, y, groups) > 0.95 and separability(shifted, y, groups, metric="auroc") > 0.99
    # Features that only identify the image: with folds by image they cannot carry a label over.
    identity = np.eye(40)[groups] + 0.01 * rng.normal(size=(400, 40))
    assert separability(identity, y, groups) < 0.7
    assert np.isnan(separability(noise, np.zeros(400), groups))
    with pytest.raises(ValueError, match="differ in length"):
        separability(noise, y[:10], groups)
    train = np.arange(400) < 200
    assert transfer_auroc(shifted, y, train) > 0.99 and np.isnan(transfer_auroc(shifted, y, np.arange(400) < 400))


def test_patch_spaces_know_what_each_space_is(gap_suite):
    from gadlib.explore import SPACES, alignment_table, patch_spaces

    frames = {"one": gap_suite[gap_suite["category"] != "leather"], "two": gap_suite[gap_suite["category"] == "leather"]}
    sample = patch_spaces(frames, create_method("knn", image_size=96, progress=False), shots=2, per_group=3,
                          normal_cells=5, seed=1)
    p = sample.patches
    assert list(sample.spaces) == list(SPACES) and all(len(x) == len(p) for x in sample.spaces.values())
    assert (p.loc[p["kind"] == "normal"].groupby("image").size() == 5).all()
    assert set(p["kind"]) == {"normal", "real", "synthetic"}
    b = sample.spaces["residual, VOD (B)"]
    assert (b >= 0).all() and (np.diff(b, axis=1) <= 1e-6).all()          # sorted magnitudes
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), np.linalg.norm(sample.spaces["residual"], axis=1), rtol=1e-4)
    table = alignment_table(sample)
    assert table["space"].tolist() == list(SPACES)
    assert {"category, normal", "dataset, abnormal", "real vs synthetic, abnormal", "normal vs abnormal",
            "synthetic -> real", "one -> rest", "two -> rest"} <= set(table.columns)
    with pytest.raises(ValueError, match="vod_channel='none'"):
        patch_spaces(frames, create_method("knn", image_size=96, vod_channel="gaussian", progress=False))


def test_residual_space_results_are_read_back_from_the_cache_not_recomputed(gap_suite, tmp_path, monkeypatch):
    from gadlib import explore
    from gadlib.progress import PROGRESS_ENV, read_events

    monkeypatch.setenv(PROGRESS_ENV, str(tmp_path / "events.jsonl"))
    frames = {"one": gap_suite[gap_suite["category"] != "leather"]}
    method = create_method("knn", image_size=96, progress=False)
    first = explore.patch_spaces(frames, method, shots=2, per_group=2, normal_cells=3, seed=1)
    x = first.spaces["residual"]
    coords, table = explore.embed(x, "pca"), explore.alignment_table(first)
    # the second time, nothing is computed: the three derived results come back equal from the cache
    calls = []
    monkeypatch.setattr(explore, "separability", lambda *a, **k: calls.append(1) or 0.0)
    again = explore.patch_spaces(frames, method, shots=2, per_group=2, normal_cells=3, seed=1)
    np.testing.assert_array_equal(again.spaces["residual"], x)
    pd.testing.assert_frame_equal(again.patches, first.patches)
    np.testing.assert_array_equal(explore.embed(x, "pca"), coords)
    pd.testing.assert_frame_equal(explore.alignment_table(again), table)
    assert not calls
    events = [(e["label"], e["reused"]) for e in read_events(tmp_path / "events.jsonl") if e["kind"] == "cell"]
    assert events == [("patch_spaces", False), ("embed_pca", False), ("alignment_table", False),
                      ("patch_spaces", True), ("embed_pca", True), ("alignment_table", True)]
    # anything that changes the result is a new entry: another seed, other data, another embedding
    other = explore.patch_spaces(frames, method, shots=2, per_group=2, normal_cells=3, seed=2)
    assert not np.array_equal(explore.embed(x[::-1].copy(), "pca"), coords)
    cells = [e for e in read_events(tmp_path / "events.jsonl") if e["kind"] == "cell"]
    assert [(e["label"], e["reused"]) for e in cells[-2:]] == [("patch_spaces", False), ("embed_pca", False)]
    assert len(other.patches)
    with pytest.raises(ValueError, match="how must be"):
        explore.embed(x, "mds")
