"""Does each learned part earn its place? Every trained method against its own training-free part.

Each method is trained on two synthetic source categories (tile, wood_grain) and scored on a third that no
training saw (leather), with the same reference draws for the full method and for its training-free part:

* ResAD against its residual distance (the nearest-reference L2 distance on the same levels, without
  local averaging: kNN with ``neighbourhood=1``);
* vod against its distance part (``scoring="distance"``: ``|r|`` in the VOD space);
* NAGL against its normal map (``mode="normal_only"``);
* InCTRL against its patch term (``score="patch"``, ``s_p``).

Each method is also read against the same configuration untrained (``epochs=0``), and ResAD's flows must
raise the log-likelihood of a held-out category's normal residuals. A method whose learning does nothing
(``optimizer.step()`` disabled in ``training.optimise``, or ResAD's NLL term multiplied by zero) must fail here. Where a learned part does *not* beat its training-free part on
this suite, the test is an expected failure that says so with the measured numbers (strict: it fails
once the learned part starts to win, so the statement cannot go stale).
"""
from __future__ import annotations

import pandas as pd
import pytest

from gadlib.methods import create_method

HELD_OUT = "leather"
SHOTS, SEEDS = [1, 2, 4], [0, 1, 2]
MARGIN = 0.03          # the full method must win by at least this much image AUROC (mean over k and seeds)
TRAIN = {              # tiny but long enough to learn (seconds on two cores)
    "resad": dict(image_size=96, epochs=2, steps_per_epoch=15, batch_size=8, train_shots=2, flow_blocks=4),
    "vod": dict(image_size=96, epochs=10, steps_per_epoch=20, simulated_per_category=6),
    "nagl": dict(image_size=96, epochs=10, steps_per_epoch=20, simulated_per_category=6),
    "inctrl": dict(image_size=96, epochs=10, steps_per_epoch=20, simulated_per_category=6),
}


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    from gadlib.data.synth import generate_suite

    root = tmp_path_factory.mktemp("learning_suite")
    return generate_suite(root, categories=["tile", "wood_grain", HELD_OUT], defects=["scratch", "hole", "stain"],
                          n_train=8, n_test_normal=6, n_test_per_defect=4, size=96, seed=3)


@pytest.fixture(scope="module")
def models(suite):
    """Per method: trained on the source categories, and the same configuration untrained (epochs = 0: the
    same seeded initialisation, source constants included)."""
    source = suite[suite["category"] != HELD_OUT]
    return {name: (create_method(name, **params, progress=False).fit(source),
                   create_method(name, **dict(params, epochs=0), progress=False).fit(source))
            for name, params in TRAIN.items()}


def _part(name: str, model):
    if name == "resad":
        return create_method("knn", image_size=96, neighbourhood=1, metric="l2", reduction="max", progress=False)
    return model.with_params(**{"vod": dict(scoring="distance"), "nagl": dict(mode="normal_only"),
                                "inctrl": dict(score="patch")}[name])


def _mean_auroc(suite: pd.DataFrame, method, abnormal_shots: int) -> float:
    from gadlib.study import evaluate

    result = evaluate(suite, method, "learning", SHOTS, SEEDS, abnormal_shots=abnormal_shots, categories=[HELD_OUT],
                      progress=False, store=False)
    auroc = result.tidy[result.tidy["metric"] == "image_auroc"]["value"]
    assert len(auroc) == len(SHOTS) * len(SEEDS)
    return float(auroc.mean())


def _beats(name: str, suite, models, against: str, abnormal_shots: int = 0) -> None:
    trained, untrained = models[name]
    other = untrained if against == "untrained" else _part(name, trained)
    full = _mean_auroc(suite, trained, abnormal_shots)
    alone = _mean_auroc(suite, other, abnormal_shots)
    assert full > alone + MARGIN, f"{name} (m = {abnormal_shots}): trained {full:.3f} vs {against} {alone:.3f}"


def _xfail(reason: str):
    return pytest.mark.xfail(strict=True, reason=reason)


@pytest.mark.parametrize("name", ["resad", "vod", "nagl", "inctrl"])
def test_training_lowers_the_loss(models, name):
    history = models[name][0].fit_record_["history"]
    total = [sum(v for k, v in epoch.items() if k != "epoch") for epoch in history]
    assert len(total) == TRAIN[name]["epochs"] and total[-1] < total[0], total
    if name == "resad":        # the flows' own objective, not only the constraintor's: measured 2.26 -> 2.13
        assert history[-1]["nll"] < history[0]["nll"] - 0.05, [h["nll"] for h in history]


def test_resad_flows_learn_the_density_of_normal_residuals_of_a_category_they_never_saw(suite, models):
    """Mean log-likelihood per dimension of the held-out category's normal test cells, residuals against four
    of its normal training images: measured -2.41 / -1.60 (levels 0 / 1) untrained, -1.01 / -0.98 trained."""
    import torch

    from gadlib.kernels.patches import to_patches
    from gadlib.kernels.residual import nearest_neighbour

    held = suite[suite["category"] == HELD_OUT]
    refs = held[held["split"] == "train"]["image_path"].tolist()[:4]
    queries = held[(held["split"] == "test") & (held["label"] == 0)]["image_path"].tolist()

    def log_likelihood(model) -> list[float]:
        model.feature_cache().ensure(refs + queries)
        out = []
        with torch.inference_mode():
            for level, (ref, query) in enumerate(zip(model._features(refs), model._features(queries))):
                bank = to_patches(ref)
                rows = nearest_neighbour(to_patches(query), bank)[1]
                out.append(model._log_likelihood(level, model._residual(query, bank, rows)).mean().item())
        return out

    trained, untrained = (log_likelihood(model) for model in models["resad"])
    assert all(t > u + 0.3 for t, u in zip(trained, untrained)), (trained, untrained)


def test_resad_beats_its_residual_distance_on_a_held_out_category(suite, models):
    # measured: 0.84 / 0.87 / 0.83 against 0.71 / 0.71 / 0.69 at k = 1 / 2 / 4 -- but see the next test
    _beats("resad", suite, models, "part")


@_xfail("measured: trained 0.841 vs untrained 0.843 (mean over k = 1, 2, 4 and 3 seeds): ResAD's lead over the "
        "residual distance comes from its architecture (a 3x3 constraintor and flows, even at initialisation), "
        "not from what it learns on two source categories")
def test_resad_training_beats_the_untrained_model(suite, models):
    _beats("resad", suite, models, "untrained")


def test_vod_beats_its_distance_part_on_a_held_out_category(suite, models):
    # measured (default readings, gated): 0.70 / 0.71 / 0.61 against 0.61 / 0.63 / 0.57
    _beats("vod", suite, models, "part")


def test_vod_training_beats_the_untrained_model(suite, models):
    # measured: 0.67 against 0.50
    _beats("vod", suite, models, "untrained")


def test_nagl_training_beats_the_untrained_model_without_abnormal_references(suite, models):
    # measured: 0.67 against 0.53 (m = 0)
    _beats("nagl", suite, models, "untrained", abnormal_shots=0)


@_xfail("measured: trained 0.63 vs untrained 0.68 (m = 1): with an abnormal reference, NAGL's training does not "
        "help on this suite")
def test_nagl_training_beats_the_untrained_model_with_an_abnormal_reference(suite, models):
    _beats("nagl", suite, models, "untrained", abnormal_shots=1)


@_xfail("measured: NAGL 0.64 / 0.67 / 0.65 vs its normal map alone 0.72 / 0.78 / 0.71 (k = 1 / 2 / 4, m = 1): on "
        "this suite the learned abnormal map costs points")
def test_nagl_beats_its_normal_map_on_a_held_out_category(suite, models):
    _beats("nagl", suite, models, "part", abnormal_shots=1)


@_xfail("measured: trained 0.57 vs untrained 0.73: on this suite InCTRL's training makes its heads worse")
def test_inctrl_training_beats_the_untrained_model(suite, models):
    _beats("inctrl", suite, models, "untrained")


@_xfail("measured: InCTRL 0.57 / 0.55 / 0.55 vs s_p alone 0.68 / 0.76 / 0.77 (k = 1 / 2 / 4): on this suite the "
        "learned heads cost points")
def test_inctrl_beats_its_patch_term_on_a_held_out_category(suite, models):
    _beats("inctrl", suite, models, "part")
