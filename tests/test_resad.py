"""ResAD: its kernels and modules on synthetic tensors, the source pool, and a tiny end-to-end run."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from gadlib.kernels.patches import to_patches
from gadlib.kernels.position import sinusoidal_position_2d
from gadlib.kernels.residual import nearest_in_first, nearest_neighbour, nearest_per_group, residual
from gadlib.modules.constraintor import FeatureConstraintor, occ_loss, shell_loss
from gadlib.modules.flow import ConditionalFlow, boundary_push_pull


# -- feature converter (kernels) ---------------------------------------------------------------------

@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_residual_of_a_reference_against_itself_is_zero(metric):
    refs = torch.randn(3, 8, 5, 5)             # k=3 references, 8 channels, 5x5 positions
    bank = to_patches(refs)
    queries = to_patches(refs[1:2])            # the second reference, queried against all three
    _, rows = nearest_neighbour(queries, bank, metric)
    assert torch.equal(residual(queries, bank, rows), torch.zeros_like(queries))
    assert torch.equal(rows, torch.arange(25, 50))


def test_nearest_match_is_found_across_positions_and_references():
    generator = torch.Generator().manual_seed(0)
    refs = torch.randn(4, 6, 3, 3, generator=generator)
    bank = to_patches(refs)
    # Each query is a slightly perturbed copy of a bank row at another position of another reference.
    targets = torch.tensor([35, 2, 20, 11])
    queries = bank[targets] + 1e-3 * torch.randn(4, 6, generator=generator)
    _, rows = nearest_neighbour(queries, bank)
    assert torch.equal(rows, targets)
    diff = residual(queries, bank, rows)
    assert torch.allclose(diff, queries - bank[targets])
    assert torch.allclose(residual(queries, bank, rows, "squared"), diff ** 2)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_nearest_in_first_k_groups_equals_brute_force(metric):
    generator = torch.Generator().manual_seed(1)
    queries, bank = torch.randn(50, 7, generator=generator), torch.randn(4 * 9, 7, generator=generator)
    found = nearest_per_group(queries, bank, 9, metric, query_chunk=13, bank_chunk=20, return_index=True)
    for k in range(1, 5):
        distance, rows = nearest_in_first(*found, k)
        expected_distance, expected_rows = nearest_neighbour(queries, bank[:9 * k], metric)
        assert torch.equal(rows, expected_rows)
        assert torch.allclose(distance, expected_distance, atol=1e-5)
    with pytest.raises(ValueError, match="groups must be in 1..4"):
        nearest_in_first(*found, 5)


def test_position_code_shape_range_and_uniqueness():
    code = sinusoidal_position_2d(16, 5, 7)
    assert code.shape == (16, 5, 7)
    assert code.abs().max() <= 1
    flat = code.flatten(1).T
    assert len(torch.unique(flat, dim=0)) == 35
    # The column half does not change down a column; the row half does not change along a row.
    assert torch.equal(code[:8, 0], code[:8, 4])
    assert torch.equal(code[8:, :, 0], code[8:, :, 6])
    assert code[0, 0, 0] == 0 and code[1, 0, 0] == 1     # sin(0), cos(0)
    with pytest.raises(ValueError, match="multiple of 4"):
        sinusoidal_position_2d(6, 2, 2)


# -- constraintor and its losses ----------------------------------------------------------------------

def test_occ_loss_known_answers():
    features = torch.tensor([[1.0, 1.0, 1.0], [2.0, 0.0, 0.0]])
    abnormal = torch.tensor([False, True])
    # Normal row at the origin and abnormal row kept where it was: zero loss.
    assert occ_loss(torch.tensor([[0.0, 0, 0], [2.0, 0, 0]]), features, abnormal) == 0
    # Normal row of norm sqrt(3): sqrt(3 + 1) - 1 = 1; abnormal row moved by 3 -> 3.
    output = torch.tensor([[1.0, 1.0, 1.0], [2.0, 3.0, 0.0]])
    assert occ_loss(output, features, abnormal).item() == pytest.approx(1 + 3)
    assert occ_loss(output[:1], features[:1], abnormal[:1]).item() == pytest.approx(1)


def test_shell_loss_is_zero_only_in_the_right_places():
    features = torch.tensor([[0.1, 0.0], [1.0, 0.0]])
    abnormal = torch.tensor([False, True])
    inside_and_outside = torch.tensor([[0.1, 0.0], [1.0, 0.0]])
    assert shell_loss(inside_and_outside, features, abnormal).item() == pytest.approx(0, abs=1e-6)
    swapped = torch.tensor([[0.7, 0.0], [0.1, 0.0]])
    assert shell_loss(swapped, features, abnormal).item() > 1


def test_constraintor_keeps_shape_and_is_non_negative():
    block = FeatureConstraintor(5).eval()
    out = block(torch.randn(2, 5, 4, 6))
    assert out.shape == (2, 5, 4, 6) and (out >= 0).all()


# -- flow ---------------------------------------------------------------------------------------------

def test_boundary_push_pull_known_answer():
    log_p = torch.tensor([-1.0, -2.0, -3.0, -0.5, -1.5])
    abnormal = torch.tensor([False, False, False, True, True])
    # Normal boundary at the 50th percentile = -2: normal -3 is pulled by 1 (mean over 3 -> 1/3);
    # abnormal must lie below -2 - 0.1: -0.5 -> 1.6, -1.5 -> 0.6 (mean 1.1).
    expected = 1 / 3 + 1.1
    assert boundary_push_pull(log_p, abnormal, margin=0.1, percentile=50).item() == pytest.approx(expected)
    assert boundary_push_pull(log_p[:3], abnormal[:3], percentile=50).item() == pytest.approx(1 / 3)
    assert boundary_push_pull(log_p[3:], abnormal[3:]).item() == 0


def test_flow_log_likelihood_is_finite_and_higher_on_its_training_distribution():
    torch.manual_seed(0)
    flow = ConditionalFlow(4, cond_dim=8, blocks=4)
    cond = sinusoidal_position_2d(8, 2, 2).flatten(1).T           # 4 positions
    mean = torch.tensor([3.0, -2.0, 1.0, 0.5])
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-2)
    for _ in range(150):
        x = mean + 0.3 * torch.randn(256, 4)
        loss = -flow.log_likelihood(x, cond.repeat(64, 1)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        inside = flow.log_likelihood(mean + 0.3 * torch.randn(512, 4), cond.repeat(128, 1))
        outside = flow.log_likelihood(-mean + 0.3 * torch.randn(512, 4), cond.repeat(128, 1))
    assert torch.isfinite(inside).all() and torch.isfinite(outside).all()
    assert inside.mean() > outside.mean() + 1
    # A fitted N(mean, 0.3^2) has per-dimension log-density -0.5 log(2 pi 0.09) - 0.5 = 0.28 on average.
    assert inside.mean().item() == pytest.approx(-0.5 * math.log(2 * math.pi * 0.09) - 0.5, abs=0.3)


def test_flow_rejects_wrong_shapes():
    flow = ConditionalFlow(4, cond_dim=0, blocks=2)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        flow.log_likelihood(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="at least 2 channels"):
        ConditionalFlow(1, 0)


# -- source pool ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gap_suite(tmp_path_factory):
    """Source categories (tile, wood_grain) and an unseen target category (leather), 96 px."""
    from gadlib.data.synth import generate_suite

    root = tmp_path_factory.mktemp("gap_suite")
    return generate_suite(root, categories=["tile", "wood_grain", "leather"], defects=["scratch", "hole", "stain"],
                          n_train=8, n_test_normal=6, n_test_per_defect=4, size=96, seed=3)


SMALL = dict(image_size=96, epochs=2, steps_per_epoch=15, batch_size=8, train_shots=2, flow_blocks=4,
             position_dim=16, simulated_per_category=6, progress=False)


def test_simulated_source_anomalies_are_made_once_and_remade_the_same(gap_suite, tmp_path, monkeypatch):
    from gadlib import training

    monkeypatch.setenv("GADLIB_CACHE", str(tmp_path / "cache"))
    source = gap_suite[gap_suite["category"] != "leather"]
    first, dropped = training.pool_frame(source, 5, seed=2)
    assert dropped == 0 and (first["split"] == "simulated").sum() == 2 * 5
    made = {p: Path(p).read_bytes() for p in first.loc[first["split"] == "simulated", "image_path"]}

    def no_simulation(*args, **kwargs):
        raise AssertionError("simulated again although every file was there")

    import gadlib.data.simulate as simulate_module

    monkeypatch.setattr(simulate_module, "simulate", no_simulation)
    pd.testing.assert_frame_equal(training.pool_frame(source, 5, seed=2)[0], first)    # read, not made
    monkeypatch.undo()
    monkeypatch.setenv("GADLIB_CACHE", str(tmp_path / "cache"))
    lost = sorted(made)[-1]                # one anomaly lost: its category is made again, the same bytes
    Path(lost).unlink()
    pd.testing.assert_frame_equal(training.pool_frame(source, 5, seed=2)[0], first)
    assert {p: Path(p).read_bytes() for p in made} == made


def test_source_pool_episodes_never_query_a_reference(gap_suite):
    from gadlib.methods import create_method
    from gadlib.training import SourcePool

    source = gap_suite[gap_suite["category"] != "leather"]
    pool = SourcePool(source, create_method("resad", **SMALL).feature_cache(), simulated_per_category=6)
    # 8 + 6 normal, 12 real anomalies with masks, 6 simulated, per category.
    assert len(pool) == 2 * (14 + 12 + 6)
    assert set(pool.frame.loc[pool.frame["split"] == "simulated", "label"]) == {1}
    rng = np.random.default_rng(0)
    simulated_queries = 0
    for _ in range(40):
        episode = pool.episode(rng, shots=3, batch_size=8)
        assert not set(episode.references) & set(episode.queries)
        # no query was simulated on a reference: a reference plus a paste would be a shortcut to learn
        made_from = pool.frame["source_path"].iloc[episode.queries].dropna()
        assert not set(made_from) & set(pool.frame["image_path"].iloc[episode.references])
        assert set(pool.origin[episode.queries]).isdisjoint(pool.origin[episode.references])
        simulated_queries += len(made_from)
        rows = pool.frame.iloc[np.concatenate([episode.references, episode.queries])]
        assert set(rows["category"]) == {episode.category}
        assert (pool.frame["label"].iloc[episode.references] == 0).all()
        assert pool.frame["label"].iloc[episode.queries].sum() == 4      # anomaly_fraction 0.5 of 8
    assert simulated_queries > 20                      # the rule was tested on simulated queries, not avoided
    # Masks become per-cell coverage in [0, 1], zero on normal images.
    fraction = pool.abnormal_fraction[0]
    assert fraction.min() >= 0 and fraction.max() <= 1
    normal = torch.tensor((pool.frame["label"] == 0).to_numpy())
    assert fraction[normal].sum() == 0 and fraction[~normal].flatten(1).max(1).values.min() > 0


def test_source_pool_needs_two_normal_images(gap_suite):
    from gadlib.methods import create_method
    from gadlib.training import SourcePool

    lonely = gap_suite[(gap_suite["category"] == "tile")]
    lonely = pd.concat([lonely[lonely["label"] == 0].head(1), lonely[lonely["label"] == 1]])
    with pytest.raises(ValueError, match="'tile' has 1 normal image"):
        SourcePool(lonely, create_method("resad", **SMALL).feature_cache(), simulated_per_category=0)


# -- end to end ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(gap_suite, tmp_path_factory):
    from gadlib.methods import create_method

    model = create_method("resad", **SMALL).fit(gap_suite[gap_suite["category"] != "leather"])
    path = model.save(tmp_path_factory.mktemp("ckpt") / "resad")
    return model, path


def test_training_records_a_finite_curve(trained):
    model, _ = trained
    history = model.fit_record_["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(math.isfinite(v) for h in history for v in h.values())
    assert model.fit_record_["source_categories"] == ["tile", "wood_grain"]
    assert torch.isfinite(model.source_logp_max_).all() and model.fit_record_["train_seconds"] > 0


def test_resad_evaluates_end_to_end_on_an_unseen_category(trained, gap_suite):
    """The study path (episodes, predict_shots, metrics) on a trained ResAD. The bars are regression guards
    that the training-free residual map alone also clears: whether training earns its place is
    tests/test_learning.py's question."""
    from gadlib.study import evaluate

    model, _ = trained
    result = evaluate(gap_suite, model, "gap", shots=[2, 4], seeds=[0, 1], categories=["leather"], progress=False)
    auroc = result.tidy[result.tidy["metric"] == "image_auroc"]["value"]
    pixel = result.tidy[result.tidy["metric"] == "pixel_auroc"]["value"]
    assert len(auroc) == 4 and auroc.mean() > 0.7
    assert pixel.mean() > 0.7


def test_predict_shots_equals_predict_with_the_first_k(trained, gap_suite):
    from gadlib.methods import References

    model, _ = trained
    leather = gap_suite[gap_suite["category"] == "leather"]
    pool = sorted(leather.loc[leather["split"] == "train", "image_path"])[:4]
    queries = sorted(leather.loc[leather["split"] == "test", "image_path"])[:5]
    both = model.predict_shots(queries, References(pool), [1, 4])
    for k in (1, 4):
        alone = model.predict(queries, References(pool[:k]))
        np.testing.assert_allclose(both[k].image, alone.image, rtol=1e-6)
        np.testing.assert_allclose(both[k].pixel, alone.pixel, rtol=1e-5, atol=1e-6)


def test_checkpoint_round_trip_and_backbone_mismatch(trained, gap_suite):
    from gadlib.methods import Method, References

    model, path = trained
    leather = gap_suite[gap_suite["category"] == "leather"]
    refs = References(sorted(leather.loc[leather["split"] == "train", "image_path"])[:2])
    queries = sorted(leather.loc[leather["split"] == "test", "image_path"])[:4]
    loaded = Method.load(path, progress=False)
    assert loaded.get_params() == model.get_params()
    np.testing.assert_array_equal(loaded.predict(queries, refs).image, model.predict(queries, refs).image)
    with pytest.raises(ValueError, match="checkpoint was trained on backbone features"):
        Method.load(path, image_size=128, progress=False)


def test_normalisations_known_answers(trained, gap_suite):
    from gadlib.methods import Method, References

    model, path = trained
    leather = gap_suite[gap_suite["category"] == "leather"]
    refs = References(sorted(leather.loc[leather["split"] == "train", "image_path"])[:2])
    queries = sorted(leather.loc[leather["split"] == "test", "image_path"])
    transductive = Method.load(path, normalization="transductive", progress=False)
    per_image = Method.load(path, normalization="image", progress=False)
    together = transductive.predict(queries, refs).image
    own = per_image.predict(queries, refs).image
    # One query alone: the max over "every query" is that query's own max, so transductive = per-image.
    for i in (0, len(queries) - 1):
        np.testing.assert_allclose(transductive.predict(queries[i:i + 1], refs).image, own[i:i + 1], rtol=1e-6)
    # Together, each level's shift is the max over all queries (>= each image's own), so every map and
    # score can only grow, and it does for the queries that do not hold the maxima.
    assert (together >= own - 1e-6).all() and (together > own + 1e-4).sum() >= len(queries) // 2
    # The default (source) normalisation is inductive: a query's score does not depend on the others.
    np.testing.assert_allclose(model.predict(queries[:3], refs).image, model.predict(queries, refs).image[:3],
                               rtol=1e-6)
    with pytest.raises(ValueError, match="normalization must be one of"):
        Method.load(path, normalization="test-set-max", progress=False)


def test_with_params_changes_scoring_only(trained, gap_suite):
    from gadlib.methods import Method, References, create_method

    model, path = trained
    leather = gap_suite[gap_suite["category"] == "leather"]
    refs = References(sorted(leather.loc[leather["split"] == "train", "image_path"])[:2])
    queries = sorted(leather.loc[leather["split"] == "test", "image_path"])[:6]
    variant = model.with_params(normalization="image")
    assert variant.normalization == "image" and model.normalization == "source"
    expected = Method.load(path, normalization="image", progress=False).predict(queries, refs, with_pixel=False)
    np.testing.assert_array_equal(variant.predict(queries, refs, with_pixel=False).image, expected.image)
    with pytest.raises(ValueError, match=r"\['residual'\] change what fit\(\) learns"):
        model.with_params(residual="squared")
    with pytest.raises(ValueError, match="unknown hyper-parameters"):
        model.with_params(temperature=2)
    assert create_method("knn", progress=False).with_params(grid="finest").grid == "finest"  # nothing learned


def test_unfitted_resad_says_how_to_fit():
    from gadlib.methods import References, create_method

    with pytest.raises(RuntimeError, match="not fitted"):
        create_method("resad", progress=False).predict(["a.png"], References(["b.png"]))
