"""Tests of few-shot episode sampling (gadlib.data.references)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gadlib.data.references import Episode, sample_episode
from gadlib.data.schema import make_frame

N_TRAIN, N_TEST_GOOD, N_TEST_BAD = 12, 6, 5


def _rows(root: str, category: str) -> list[dict]:
    rows = []
    for i in range(N_TRAIN):
        rows.append(dict(image_path=f"{root}/{category}/train/good/{i:03d}.png", mask_path=None, label=0,
                         defect="good", category=category, domain="industrial", split="train"))
    for i in range(N_TEST_GOOD):
        rows.append(dict(image_path=f"{root}/{category}/test/good/{i:03d}.png", mask_path=None, label=0,
                         defect="good", category=category, domain="industrial", split="test"))
    for i in range(N_TEST_BAD):
        rows.append(dict(image_path=f"{root}/{category}/test/crack/{i:03d}.png",
                         mask_path=f"{root}/{category}/ground_truth/crack/{i:03d}_mask.png", label=1,
                         defect="crack", category=category, domain="industrial", split="test"))
    return rows


@pytest.fixture
def frame():
    # fake paths: the sampler never opens files unless it simulates abnormal references
    return make_frame(_rows("/fake", "bottle") + _rows("/fake", "screw"))


def test_normal_refs_are_nested_across_k(frame):
    for seed in range(5):
        refs = {k: sample_episode(frame, "bottle", k, seed).normal_refs for k in (1, 2, 4, 8)}
        assert [len(refs[k]) for k in (1, 2, 4, 8)] == [1, 2, 4, 8]
        assert refs[2][:1] == refs[1] and refs[4][:2] == refs[2] and refs[8][:4] == refs[4]
        assert len(set(refs[8])) == 8
        assert all("/bottle/train/good/" in p for p in refs[8])


def test_seeds_differ_and_draws_are_deterministic(frame):
    draws = [sample_episode(frame, "bottle", 4, seed).normal_refs for seed in range(6)]
    assert len({tuple(d) for d in draws}) == 6, "different seeds should give different references"
    again = sample_episode(frame, "bottle", 4, 3)
    assert again.normal_refs == draws[3]
    assert again == sample_episode(frame, "bottle", 4, 3)


def test_draw_depends_on_the_target_not_on_frame_order(frame):
    shuffled = frame.sample(frac=1.0, random_state=0).reset_index(drop=True)
    assert sample_episode(shuffled, "bottle", 4, 1) == sample_episode(frame, "bottle", 4, 1)
    # same seed, other category: an independent draw (not the same file indices)
    bottle = [Path(p).name for p in sample_episode(frame, "bottle", 8, 1).normal_refs]
    screw = [Path(p).name for p in sample_episode(frame, "screw", 8, 1).normal_refs]
    assert bottle != screw


def test_references_never_among_queries_and_queries_fixed_across_k(frame):
    test_paths = set(frame[(frame["category"] == "bottle") & (frame["split"] == "test")]["image_path"])
    queries = None
    for k in (1, 2, 4, 8):
        episode = sample_episode(frame, "bottle", k, seed=7)
        assert not set(episode.normal_refs) & set(episode.queries)
        assert set(episode.queries) == test_paths
        assert episode.target == "dataset/bottle" and episode.shots == k and episode.abnormal_shots == 0
        if queries is None:
            queries = episode.queries
        assert episode.queries == queries


def test_real_abnormal_refs_leave_the_queries_and_do_not_depend_on_k(frame):
    abnormal = {}
    for k in (1, 2, 4):
        episode = sample_episode(frame, "bottle", k, seed=2, abnormal_shots=2)
        assert len(episode.abnormal_refs) == 2 and episode.abnormal_shots == 2
        assert all("/bottle/test/crack/" in p for p in episode.abnormal_refs)
        assert [Path(m).name for m in episode.abnormal_masks] == \
            [Path(p).stem + "_mask.png" for p in episode.abnormal_refs]
        assert not set(episode.abnormal_refs) & set(episode.queries)
        assert len(episode.queries) == N_TEST_GOOD + N_TEST_BAD - 2
        abnormal[k] = episode.abnormal_refs
    assert abnormal[1] == abnormal[2] == abnormal[4]
    # adding abnormal references never changes the normal ones
    assert sample_episode(frame, "bottle", 4, 2, abnormal_shots=3).normal_refs == \
        sample_episode(frame, "bottle", 4, 2).normal_refs


def test_too_many_shots_name_the_pool(frame):
    with pytest.raises(ValueError, match=rf"k=13.*holds only {N_TRAIN}"):
        sample_episode(frame, "bottle", N_TRAIN + 1, 0)
    assert sample_episode(frame, "bottle", N_TRAIN, 0).shots == N_TRAIN
    with pytest.raises(ValueError, match=rf"m=6.*only {N_TEST_BAD}"):
        sample_episode(frame, "bottle", 1, 0, abnormal_shots=N_TEST_BAD + 1)


@pytest.mark.parametrize("kwargs, match", [
    ({"category": "cable"}, "no category 'cable'.*bottle"),
    ({"shots": 0}, "shots"),
    ({"abnormal_shots": -1}, "abnormal_shots"),
    ({"abnormal_source": "generated"}, "abnormal_source"),
])
def test_bad_arguments_raise(frame, kwargs, match):
    args = {"category": "bottle", "shots": 2, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        sample_episode(frame, **args)


def test_json_round_trip(frame):
    episode = sample_episode(frame, "screw", 4, seed=11, abnormal_shots=2, dataset="mvtec")
    episode.notes["drawn_by"] = "test"
    restored = Episode.from_json(episode.to_json())
    assert restored == episode
    assert restored.target == "mvtec/screw" and restored.seed == 11


# -- simulated abnormal references (real files) ----------------------------------------------------

@pytest.fixture
def image_frame(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for split, count in (("train", 4), ("test", 3)):
        for i in range(count):
            path = tmp_path / "data" / split / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
            rows.append(dict(image_path=str(path), mask_path=None, label=0, defect="good", category="tile",
                             domain="industrial", split=split))
    return make_frame(rows)


def test_simulated_abnormal_refs(image_frame, tmp_path):
    out_dir = tmp_path / "simulated"
    episode = sample_episode(image_frame, "tile", 2, seed=3, abnormal_shots=3, abnormal_source="simulated",
                             simulated_dir=out_dir)
    assert episode.abnormal_source == "simulated" and episode.abnormal_shots == 3
    assert len(set(episode.abnormal_refs)) == 3
    for i, (image_file, mask_file) in enumerate(zip(episode.abnormal_refs, episode.abnormal_masks)):
        assert Path(image_file).parent == out_dir and Path(image_file).is_file() and Path(mask_file).is_file()
        source = np.asarray(Image.open(episode.notes["simulated_from"][i]).convert("RGB"))
        image = np.asarray(Image.open(image_file).convert("RGB"))
        mask = np.asarray(Image.open(mask_file)) > 0
        assert image.shape == source.shape and mask.shape == source.shape[:2]
        assert mask.any() and mask.mean() < 0.5
        assert np.array_equal(image[~mask], source[~mask]), "pixels outside the mask changed"
        assert (image != source).any(axis=-1)[mask].mean() > 0.5
    # simulated files are not queries, and the draw is reproducible
    assert not set(episode.abnormal_refs) & set(episode.queries)
    again = sample_episode(image_frame, "tile", 2, seed=3, abnormal_shots=3, abnormal_source="simulated",
                           simulated_dir=tmp_path / "again")
    for a, b in zip(episode.abnormal_refs, again.abnormal_refs):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def test_simulated_refs_are_the_same_for_every_k(image_frame, tmp_path):
    draws = [sample_episode(image_frame, "tile", k, seed=5, abnormal_shots=2, abnormal_source="simulated",
                            simulated_dir=tmp_path) for k in (1, 2, 4)]
    assert draws[0].abnormal_refs == draws[1].abnormal_refs == draws[2].abnormal_refs
    pool = set(image_frame.loc[(image_frame["split"] == "train") & (image_frame["label"] == 0), "image_path"])
    assert set(draws[0].notes["simulated_from"]) <= pool


def test_simulated_refs_default_to_the_cache_folder(image_frame, tmp_path, monkeypatch):
    monkeypatch.setenv("GADLIB_CACHE", str(tmp_path / "cache"))
    episode = sample_episode(image_frame, "tile", 1, seed=0, abnormal_shots=1, abnormal_source="simulated")
    assert Path(episode.abnormal_refs[0]).parent == tmp_path / "cache" / "simulated"
    assert Path(episode.abnormal_refs[0]).is_file()
