"""NAGL and InCTRL: losses, per-sample attention, m abnormal references, the protocols, tiny end to end."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from gadlib.kernels.similarity import inctrl_patch_residual
from gadlib.modules.attention import ProxyAttention
from gadlib.modules.losses import dice_loss, focal_loss

# -- losses ---------------------------------------------------------------------------------------


def test_focal_loss_known_answers():
    p = torch.tensor([0.9, 0.2])
    t = torch.tensor([1.0, 0.0])
    # (1 - 0.9)^2 * -log 0.9 and (1 - 0.8)^2 * -log 0.8, averaged.
    expected = (0.01 * -math.log(0.9) + 0.04 * -math.log(0.8)) / 2
    assert focal_loss(p, t, gamma=2.0).item() == pytest.approx(expected, rel=1e-5)
    # gamma = 0 is plain binary cross-entropy.
    assert focal_loss(p, t, gamma=0.0).item() == pytest.approx(
        torch.nn.functional.binary_cross_entropy(p, t).item(), rel=1e-5)
    with pytest.raises(ValueError, match="differ in shape"):
        focal_loss(p, t[:1])


def test_dice_loss_known_answers():
    target = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert dice_loss(target.clone(), target, smooth=0.0).item() == pytest.approx(0.0)
    assert dice_loss(1 - target, target, smooth=0.0).item() == pytest.approx(1.0)
    # P = (0.5, 0.5, 0.5, 0.5): 1 - 2*1 / (2 + 2) = 0.5.
    assert dice_loss(torch.full((1, 4), 0.5), target, smooth=0.0).item() == pytest.approx(0.5)


# -- attention: the public code's mask order is a named switch -------------------------------------

def test_faithful_mask_order_mixes_samples_and_the_default_does_not():
    torch.manual_seed(0)
    clean = ProxyAttention(16, heads=4).eval()
    faithful = ProxyAttention(16, heads=4, faithful_mask_order=True).eval()
    faithful.load_state_dict(clean.state_dict())
    proxies, keys, values = torch.randn(2, 5, 16), torch.randn(2, 9, 16), torch.randn(2, 9, 16)
    allowed = torch.zeros(2, 9, dtype=torch.bool)
    allowed[0, :3] = True
    allowed[1, 5:] = True
    alone = torch.cat([clean(proxies[i:i + 1], keys[i:i + 1], values[i:i + 1], allowed[i:i + 1]) for i in range(2)])
    torch.testing.assert_close(clean(proxies, keys, values, allowed), alone, rtol=1e-5, atol=1e-6)
    # With the bug, sample 0 attends through sample 1's mask (in some heads): results change.
    assert not torch.allclose(faithful(proxies, keys, values, allowed), alone, atol=1e-4)
    # For batch 1 the bug is invisible.
    torch.testing.assert_close(faithful(proxies[:1], keys[:1], values[:1], allowed[:1]), alone[:1],
                               rtol=1e-5, atol=1e-6)


# -- InCTRL patch residuals ------------------------------------------------------------------------

def test_inctrl_patch_residuals_for_every_k_equal_the_kernel():
    from gadlib.methods.inctrl import InCTRL

    torch.manual_seed(0)
    queries = [torch.randn(3, 16, 8), torch.randn(3, 16, 12)]       # 3 queries, 4x4 grid, two layers
    refs = [torch.randn(4, 16, 8), torch.randn(4, 16, 12)]          # K = 4 references
    maps = InCTRL.patch_residuals(queries, refs, [1, 2, 4])
    for k, found in maps.items():
        for b in range(3):
            expected = inctrl_patch_residual([q[b] for q in queries], [r[:k].reshape(-1, r.shape[-1]) for r in refs])
            torch.testing.assert_close(found[b], expected, rtol=1e-5, atol=1e-5)
    # A query equal to a reference has a zero residual map for every k that includes it.
    same = InCTRL.patch_residuals([r[1:2] for r in refs], refs, [2, 4])
    assert same[2].abs().max() < 1e-5 and same[4].abs().max() < 1e-5


def test_inctrl_faithful_reshape_mixes_queries_only_for_batches():
    from gadlib.methods.inctrl import InCTRL

    torch.manual_seed(0)
    level = torch.randn(2, 6, 3, 3)
    clean, _ = InCTRL(neighbourhood=1)._layers([level])
    faithful, _ = InCTRL(neighbourhood=1, faithful_reshape=True)._layers([level])
    assert torch.equal(clean[0][0], level[0].flatten(1).T)
    assert not torch.equal(faithful[0], clean[0])
    assert torch.equal(InCTRL(neighbourhood=1, faithful_reshape=True)._layers([level[:1]])[0][0], clean[0][:1])


def test_inctrl_double_sigmoid_switch_changes_the_loss():
    from gadlib.methods.inctrl import InCTRL

    p, labels = torch.tensor([0.95, 0.05]), torch.tensor([1.0, 0.0])
    assert InCTRL()._focal(p, labels).item() < 0.01
    # A second sigmoid maps 0.05 to 0.51: a confident, correct normal score now looks anomalous.
    assert InCTRL(faithful_double_sigmoid=True)._focal(p, labels).item() > 0.05


# -- text prior ------------------------------------------------------------------------------------

def test_text_prior_prompts_and_zero_shot_score():
    from gadlib.modules.text_prior import TextPrior, prompts, zero_shot_score

    normal, anomalous = prompts("normal", "cell"), prompts("anomalous", "cell")
    assert "a photo of a flawless cell." in normal and "a photo of a damaged cell." in anomalous
    with pytest.raises(ValueError, match="state must be one of"):
        prompts("weird")
    normal_text, anomalous_text = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    score = zero_shot_score(torch.tensor([[0.0, 2.0], [3.0, 0.0], [1.0, 1.0]]), normal_text, anomalous_text)
    assert score[0] > 0.99 and score[1] < 0.01 and score[2].item() == pytest.approx(0.5)
    with pytest.raises((FileNotFoundError, ImportError), match="open_clip|CLIP weights"):
        TextPrior("ViT-B-16-plus-240", "/nonexistent/clip.bin")


# -- methods on tiny data --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gap_suite(tmp_path_factory):
    """Source categories (tile, wood_grain) and an unseen target category (leather), 96 px."""
    from gadlib.data.synth import generate_suite

    root = tmp_path_factory.mktemp("guided_suite")
    return generate_suite(root, categories=["tile", "wood_grain", "leather"], defects=["scratch", "hole", "stain"],
                          n_train=8, n_test_normal=6, n_test_per_defect=4, size=96, seed=3)


SMALL = dict(image_size=96, epochs=2, steps_per_epoch=20, simulated_per_category=6, progress=False)


@pytest.fixture(scope="module")
def trained(gap_suite, tmp_path_factory):
    from gadlib.methods import create_method

    source = gap_suite[gap_suite["category"] != "leather"]
    models = {name: create_method(name, **SMALL).fit(source) for name in ("nagl", "inctrl")}
    folder = tmp_path_factory.mktemp("ckpt")
    return {name: (model, model.save(folder / name)) for name, model in models.items()}


def test_guided_source_episodes_match_defect_types_and_never_query_a_reference(gap_suite):
    from gadlib.methods import create_method
    from gadlib.training import SourcePool

    pool = SourcePool(gap_suite[gap_suite["category"] != "leather"], create_method("nagl", **SMALL).feature_cache(),
                      simulated_per_category=6)
    rng = np.random.default_rng(0)
    labels = []
    for _ in range(40):
        episode = pool.guided_episode(rng, shots=3, abnormal_shots=2)
        rows = pool.frame.iloc[list(episode.references) + list(episode.abnormal_refs) + [episode.query]]
        assert set(rows["category"]) == {episode.category}
        assert episode.query not in set(episode.references) | set(episode.abnormal_refs)
        # nor was it made from one of them, or one of them from it (a paste on the same image is a shortcut)
        taken = pool.origin[list(episode.references) + list(episode.abnormal_refs)]
        assert pool.origin[episode.query] not in set(taken)
        abnormal = pool.frame.iloc[list(episode.abnormal_refs)]
        assert len(abnormal) == 2 and (abnormal["label"] == 1).all() and abnormal["defect"].nunique() == 1
        assert pool.frame["label"].iloc[episode.query] == episode.label
        if episode.label:
            assert pool.frame["defect"].iloc[episode.query] == abnormal["defect"].iloc[0]
        labels.append(episode.label)
    assert 0.2 < np.mean(labels) < 0.8
    # m is capped at what the largest defect type allows (here 4 real + 3 simulated of a kind, minus the query).
    largest = max(len(i) for types in pool.abnormal_by_defect.values() for i in types.values())
    assert len(pool.guided_episode(rng, shots=3, abnormal_shots=50).abnormal_refs) == largest - 1
    lonely = SourcePool(gap_suite[(gap_suite["category"] == "tile") & (gap_suite["label"] == 0)],
                        create_method("nagl", **SMALL).feature_cache(), simulated_per_category=1)
    with pytest.raises(ValueError, match="no source category has a defect type with 2 anomalies"):
        lonely.guided_episode(rng, shots=3, abnormal_shots=1)


@pytest.mark.parametrize("maskless", [0.0, 0.5])
def test_nagl_trains_on_every_m_it_is_scored_with_and_on_references_without_masks(gap_suite, maskless, monkeypatch):
    from gadlib.methods import create_method
    from gadlib.methods.nagl import NAGL

    seen = []
    original = NAGL._abnormal_cells

    def record(self, coverage):
        cells = original(self, coverage)
        seen.append((len(coverage), bool(len(coverage)) and bool(cells.all()) and bool((coverage == 0).all())))
        return cells

    monkeypatch.setattr(NAGL, "_abnormal_cells", record)
    create_method("nagl", **dict(SMALL, epochs=1, train_maskless=maskless)).fit(
        gap_suite[gap_suite["category"] != "leather"])
    m = np.array([count for count, _ in seen])
    assert set(m) == {0, 1, 2}                            # m = 0 is trained, not only scored
    with_refs = [without_mask for count, without_mask in seen if count]
    share = np.mean(with_refs)                            # references stripped of their masks: attended everywhere
    assert share == 0 if maskless == 0 else 0.3 < share < 0.7
    with pytest.raises(ValueError, match="train_maskless"):
        create_method("nagl", train_maskless=1.5, **SMALL).fit(gap_suite)


def test_tiny_training_records_finite_curves(trained):
    for name, (model, _) in trained.items():
        history = model.fit_record_["history"]
        assert [h["epoch"] for h in history] == [1, 2], name
        assert all(math.isfinite(v) for h in history for v in h.values()), name
    assert trained["inctrl"][0].fit_record_["variant"] == "InCTRL-vision"


@pytest.mark.parametrize("name", ["nagl", "inctrl"])
def test_tiny_train_and_evaluate_end_to_end_on_an_unseen_category(trained, gap_suite, name):
    """The study path on a trained model with an abnormal reference. The bar is a regression guard that the
    training-free normal map alone also clears: whether training earns its place is tests/test_learning.py's."""
    from gadlib.study import evaluate

    model, _ = trained[name]
    result = evaluate(gap_suite, model, "gap", shots=[2, 4], seeds=[0, 1, 2], categories=["leather"],
                      abnormal_shots=1, progress=False)
    auroc = result.tidy[result.tidy["metric"] == "image_auroc"]["value"]
    assert len(auroc) == 6 and auroc.mean() > 0.6, auroc.tolist()


def test_two_abnormal_references_work_and_change_the_nagl_map(trained, gap_suite):
    from gadlib.data.references import sample_episode
    from gadlib.methods import References

    model, _ = trained["nagl"]
    one = sample_episode(gap_suite, "leather", 2, seed=0, abnormal_shots=1, dataset="gap")
    two = sample_episode(gap_suite, "leather", 2, seed=0, abnormal_shots=2, dataset="gap")
    assert two.abnormal_refs[:1] == one.abnormal_refs            # the first abnormal reference is shared
    queries = [q for q in two.queries if q in one.queries]
    scores = {m: model.predict(queries, References.from_episode(e)) for m, e in ((1, one), (2, two))}
    for s in scores.values():
        assert np.isfinite(s.image).all() and s.pixel.shape == (len(queries), 96, 96)
    assert not np.allclose(scores[1].image, scores[2].image)


def test_faithful_positions_only_matter_for_several_references(trained, gap_suite):
    from gadlib.data.references import sample_episode
    from gadlib.methods import References
    from gadlib.methods.base import Method

    model, path = trained["nagl"]
    faithful = Method.load(path, faithful_positions=True, progress=False)
    for m, changes in ((1, False), (2, True)):
        episode = sample_episode(gap_suite, "leather", 2, seed=1, abnormal_shots=m, dataset="gap")
        refs = References.from_episode(episode)
        a, b = model.predict(episode.queries, refs).image, faithful.predict(episode.queries, refs).image
        assert (not np.array_equal(a, b)) == changes, m


def test_a_reference_is_never_scored(trained, gap_suite):
    from gadlib.data.references import sample_episode
    from gadlib.methods import References, create_method
    from gadlib.study import evaluate

    episode = sample_episode(gap_suite, "leather", 2, seed=0, abnormal_shots=2, dataset="gap")
    assert not set(episode.queries) & (set(episode.normal_refs) | set(episode.abnormal_refs))
    refs = References.from_episode(episode)
    for model in [trained["nagl"][0], trained["inctrl"][0], create_method("knn", image_size=96, progress=False)]:
        with pytest.raises(ValueError, match="also queries"):
            model.predict(episode.queries + episode.abnormal_refs[:1], refs)
        with pytest.raises(ValueError, match="also queries"):
            model.predict(episode.queries + episode.normal_refs[:1], refs)
    result = evaluate(gap_suite, trained["nagl"][0], "gap", shots=[2], seeds=[0], categories=["leather"],
                      abnormal_shots=2, progress=False)
    scored = set(result.scores["image_path"])
    assert not scored & set(result.episodes[0].abnormal_refs)


def test_predict_shots_equals_predict_and_checkpoints_round_trip(trained, gap_suite):
    from gadlib.data.references import sample_episode
    from gadlib.methods import References
    from gadlib.methods.base import Method

    episode = sample_episode(gap_suite, "leather", 4, seed=2, abnormal_shots=1, dataset="gap")
    refs = References.from_episode(episode)
    for name, (model, path) in trained.items():
        together = model.predict_shots(episode.queries, refs, [1, 2, 4])
        for k in (1, 2, 4):
            alone = model.predict(episode.queries, References(refs.normal[:k], refs.abnormal, refs.abnormal_masks))
            np.testing.assert_allclose(together[k].image, alone.image, rtol=1e-5, atol=1e-6, err_msg=name)
        loaded = Method.load(path, progress=False)
        np.testing.assert_allclose(loaded.predict(episode.queries, refs).image, together[4].image,
                                   rtol=1e-5, atol=1e-6, err_msg=name)
        with pytest.raises(ValueError, match="checkpoint was trained on backbone features"):
            Method.load(path, image_size=64, progress=False)


def test_inctrl_combination_known_answers_and_errors():
    from gadlib.methods.inctrl import InCTRL

    out = dict(holistic=torch.tensor([0.5, 0.9]), patch=torch.tensor([0.1, 0.3]),
               image=torch.tensor([0.2, 0.7]), final=torch.tensor([0.3, 0.65]))
    for score in ("patch", "image", "holistic"):
        assert torch.equal(InCTRL(score=score).combine(out), out[score])
    assert torch.equal(InCTRL().combine(out), out["final"])
    z = InCTRL(combination="source_z")
    with pytest.raises(RuntimeError, match="source statistics"):
        z.combine(out)
    z.source_stats_ = torch.tensor([0.0, 2.0, 0.1, 0.1], dtype=torch.float64)
    # logit(0.5) = 0 -> z_h = 0, z_p = 0; logit(0.9) = log 9 -> z_h = log(9) / 2, z_p = 2
    expected = torch.tensor([0.0, (math.log(9) / 2 + 2) / 2])
    torch.testing.assert_close(z.combine(out), expected, rtol=1e-5, atol=1e-6)
    saturated = dict(out, holistic=torch.tensor([0.0, 1.0]))      # clamped before the logit: finite
    assert torch.isfinite(z.combine(saturated)).all()
    for bad in (dict(score="pixel"), dict(combination="sum")):
        with pytest.raises(ValueError, match="must be one of"):
            InCTRL(**bad)._check_params()


def test_inctrl_terms_are_scoring_switches_of_one_trained_model(trained, gap_suite):
    from gadlib.data.references import sample_episode
    from gadlib.methods import References

    model, _ = trained["inctrl"]
    mean_h, std_h, mean_p, std_p = model.source_stats_.tolist()
    assert std_h > 0 and std_p > 0 and 0 < mean_p < 1
    episode = sample_episode(gap_suite, "leather", 4, seed=1, dataset="gap")
    refs = References.from_episode(episode)
    terms = {score: model.with_params(score=score).predict(episode.queries, refs, with_pixel=False).image
             for score in ("final", "patch", "holistic")}
    np.testing.assert_allclose(terms["final"], (terms["holistic"] + terms["patch"]) / 2, rtol=1e-5, atol=1e-6)
    tokens, _ = model._features(list(episode.queries))
    ref_tokens, _ = model._features(list(refs.normal))
    expected = model.patch_residuals(tokens, ref_tokens, [4])[4].max(1).values.numpy()
    np.testing.assert_allclose(terms["patch"], expected, rtol=1e-5, atol=1e-6)
    z = model.with_params(combination="source_z").predict(episode.queries, refs, with_pixel=False).image
    logit_h = np.log(np.clip(terms["holistic"], 1e-6, 1 - 1e-6) / (1 - np.clip(terms["holistic"], 1e-6, 1 - 1e-6)))
    np.testing.assert_allclose(z, ((logit_h - mean_h) / std_h + (terms["patch"] - mean_p) / std_p) / 2,
                               rtol=1e-4, atol=1e-4)


def test_nagl_ablation_modes(trained, gap_suite):
    from gadlib.data.references import sample_episode
    from gadlib.methods import References, create_method

    model, _ = trained["nagl"]
    episode = sample_episode(gap_suite, "leather", 2, seed=0, abnormal_shots=1, dataset="gap")
    refs = References.from_episode(episode)
    normal_only = create_method("nagl", image_size=96, mode="normal_only", progress=False).predict(episode.queries, refs)
    # The normal map alone is 1 - s_n = (1 - cos) / 2: a cosine kNN map without aggregation differences.
    knn = create_method("knn", image_size=96, metric="cosine", reduction="top1%", progress=False)
    np.testing.assert_allclose(normal_only.pixel, knn.predict(episode.queries, refs).pixel / 2, rtol=1e-4, atol=1e-6)
    untrained = create_method("nagl", image_size=96, mode="untrained", progress=False)
    assert np.isfinite(untrained.predict(episode.queries, refs).image).all()     # no fit needed
    with pytest.raises(RuntimeError, match="not fitted"):
        create_method("nagl", image_size=96, progress=False).predict(episode.queries, refs)
    with pytest.raises(ValueError, match="mode must be one of"):
        model.with_params(mode="bogus").predict(episode.queries, refs)
    # Centred features need the fitted source mean.
    with pytest.raises(RuntimeError, match="needs the source mean"):
        create_method("nagl", image_size=96, mode="untrained", center="source", progress=False).predict(
            episode.queries, refs)


def test_nagl_centred_features_subtract_the_source_mean(trained, gap_suite):
    from gadlib.methods import create_method

    model = create_method("nagl", **dict(SMALL, epochs=1, steps_per_epoch=2), center="source")
    model.fit(gap_suite[gap_suite["category"] != "leather"])
    path = gap_suite["image_path"].iloc[-1]
    raw = create_method("nagl", image_size=96, progress=False).patch_features([path])
    assert model.feature_mean_.shape == (raw.shape[1],)
    assert model.feature_mean_.abs().max() > 0
    torch.testing.assert_close(model.centred_features([path]), raw - model.feature_mean_[:, None, None])
    assert torch.equal(trained["nagl"][0].feature_mean_, torch.zeros(raw.shape[1]))          # center="none"


# -- protocols and gains ---------------------------------------------------------------------------

def test_type_matched_protocol_draws_references_of_each_defect_type(gap_suite):
    from gadlib.methods import create_method
    from gadlib.study import evaluate_type_matched

    knn = create_method("knn", image_size=96, progress=False)
    result = evaluate_type_matched(gap_suite, knn, "gap", shots=[1, 2], seeds=[0, 1], abnormal_shots=1,
                                   categories=["leather"], progress=False)
    lookup = gap_suite.set_index("image_path")
    for episode in result.episodes:
        (defect,) = set(lookup.loc[episode.abnormal_refs, "defect"])
        queried = lookup.loc[episode.queries]
        assert set(queried.loc[queried["label"] == 1, "defect"]) == {defect}
        assert not set(episode.queries) & set(episode.abnormal_refs)
    per_type = result.per_type[result.per_type["metric"] == "image_auroc"]
    assert set(per_type["defect"]) == {"scratch", "hole", "stain"}
    expected = per_type.groupby(["shots", "seed"])["value"].mean()
    found = result.tidy[result.tidy["metric"] == "image_auroc"].set_index(["shots", "seed"])["value"]
    pd.testing.assert_series_equal(found.sort_index(), expected.sort_index(), check_names=False)


def test_paired_gain_known_answer():
    from gadlib.results import paired_gain

    rows = []
    for seed, (a, b) in enumerate([(0.9, 0.8), (0.7, 0.6), (0.85, 0.85)]):
        for method, value in (("nagl", a), ("knn", b)):
            rows.append(dict(dataset="d", category="c", domain="x", method=method, shots=2, abnormal_shots=1,
                             seed=seed, metric="image_auroc", value=value))
    gain = paired_gain(pd.DataFrame(rows), {"method": "nagl"}, {"method": "knn"}, "gain")
    np.testing.assert_allclose(gain.sort_values("seed")["value"], [0.1, 0.1, 0.0], atol=1e-12)
    assert set(gain["metric"]) == {"image_auroc_gain"} and set(gain["method"]) == {"gain"}
    with pytest.raises(ValueError, match="no 'image_auroc' rows match"):
        paired_gain(pd.DataFrame(rows), {"method": "resad"}, {"method": "knn"}, "gain")
