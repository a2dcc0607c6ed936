"""The residual-space explorer's answers (gadlib.explorer), on a tiny suite."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gadlib.explorer import PatchExplorer


@pytest.fixture(scope="module")
def explorer(tiny_suite):
    root, _ = tiny_suite
    return PatchExplorer(f"synth:{root}", "tile", shots=3, seed=0, max_queries=4, image_size=64)


def test_the_episode_keeps_normal_and_abnormal_queries_apart_from_the_references(explorer):
    assert len(explorer.references) == 3 and len(explorer.queries) == 4
    assert set(explorer.queries["label"]) == {0, 1}
    assert not set(explorer.references) & set(explorer.queries["path"])
    assert explorer.side == 4                                   # 64 px at stride 16: the coarser grid


def test_nearest_agrees_with_the_map_and_a_brute_force_search(explorer):
    query, row, col = 1, 2, 1
    found = explorer.nearest(query, row, col)
    assert found["distance"] == pytest.approx(explorer.score_map(query)[row, col], abs=1e-6)
    patch = explorer.query_grid[query, :, row, col]
    reference = explorer.reference_grid[found["reference"], :, found["ref_row"], found["ref_col"]]
    assert found["residual_norm"] == pytest.approx(float((patch - reference).norm()), rel=1e-5)
    cosine = torch.nn.functional.cosine_similarity(patch[None], explorer.reference_grid.permute(0, 2, 3, 1)
                                                   .reshape(-1, patch.numel()))
    assert 1 - float(cosine.max()) == pytest.approx(found["distance"], abs=1e-5)
    # reading (B) keeps the residual's size: sorted magnitudes, largest first
    assert np.all(np.diff(found["vod_b"]) <= 0)
    assert float(np.linalg.norm(found["vod_b"])) == pytest.approx(found["residual_norm"], rel=1e-4)


def test_fewer_references_never_bring_a_patch_closer(explorer):
    maps = [explorer.score_map(0, k) for k in (1, 2, 3)]
    assert np.all(maps[0] >= maps[1] - 1e-6) and np.all(maps[1] >= maps[2] - 1e-6)   # nested draws
    assert explorer.image_score(0, 1) >= explorer.image_score(0, 3) - 1e-6


def test_a_reference_patch_is_its_own_nearest(tiny_suite):
    root, _ = tiny_suite
    explorer = PatchExplorer(f"synth:{root}", "tile", shots=2, seed=0, max_queries=2, image_size=64)
    explorer.query_grid = explorer.reference_grid.clone()        # ask about the references themselves
    found = explorer.nearest(1, 3, 2)
    assert (found["reference"], found["ref_row"], found["ref_col"]) == (1, 3, 2)
    assert found["distance"] == pytest.approx(0, abs=1e-5) and found["residual_norm"] == pytest.approx(0, abs=1e-5)


def test_embedding_geometry_thumbnails_and_bad_input(explorer):
    points = explorer.embedding(per_image=5)
    assert len(points) == 5 * (3 + 4) and set(points["role"]) == {"reference", "query"}
    assert (points.loc[points["role"] == "reference", "status"] == "normal").all()
    assert "abnormal" in set(points["status"])                 # masked cells of the anomalous queries
    assert np.isfinite(points[["x", "y"]].to_numpy()).all()
    assert explorer.cell_of(0, 0) == (0, 0) and explorer.cell_of(63.9, 17) == (1, 3)
    assert explorer.cell_box(1, 3) == (48.0, 16.0, 16.0)
    assert explorer.thumbnail(explorer.references[0], 0, 0).shape == (32, 32, 3)    # one cell of context
    with pytest.raises(ValueError, match="outside"):
        explorer.nearest(0, 4, 0)
    with pytest.raises(ValueError, match="shots"):
        explorer.score_map(0, 4)
    with pytest.raises(ValueError, match="metric"):
        PatchExplorer(metric="manhattan")


def test_maps_of_the_named_baselines_and_only_cached_trained_models(explorer):
    from gadlib.baselines import BASELINES
    from gadlib.explorer import map_methods

    assert set(map_methods(trained=False)) == set(BASELINES)
    assert set(map_methods()) == set(BASELINES)              # this test cache holds no study checkpoint
    heat = explorer.method_map("kNN (cosine, top-1 %)", 0, 2)
    assert heat.shape == (64, 64) and np.isfinite(heat).all() and heat.max() > heat.min()
    fewer = explorer.method_map("kNN (cosine, top-1 %)", 0, 1)
    assert fewer.mean() >= heat.mean() - 1e-6                 # one reference covers less: never closer
    with pytest.raises(ValueError, match="unknown map"):
        explorer.method_map("PatchCore-XL", 0)
