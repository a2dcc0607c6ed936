"""Tests for gadlib.metrics: hand-computed AU-PRO goldens and brute-force cross-checks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from gadlib import metrics

# --------------------------------------------------------------------------- AU-PRO goldens
#
# Notation: curve points are (FPR, PRO) at each distinct threshold t, from high t to low,
# starting at (0, 0). Area is the trapezoid rule up to FPR = 0.3, then divided by 0.3.


def test_au_pro_one_region_golden() -> None:
    # One 2x2 region (4 px) with scores .9 .7 .5 .3; 12 normal px: one .8, one .6, ten 0.
    #   t=.9: PRO 1/4, FPR 0      t=.8: PRO 1/4, FPR 1/12   t=.7: PRO 2/4, FPR 1/12
    #   t=.6: PRO 2/4, FPR 2/12   t=.5: PRO 3/4, FPR 2/12   t=.3: PRO 1,   FPR 2/12
    #   t=0 : PRO 1,   FPR 1
    # Area to .3: [0, 1/12] at 1/4 -> 1/48; [1/12, 2/12] at 1/2 -> 1/24; [2/12, .3] at 1 -> 2/15.
    # Sum = 1/16 + 2/15 = 47/240; divided by .3 -> 47/72 = 0.65278.
    mask = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    amap = np.array([[0.9, 0.7, 0.8, 0.0], [0.5, 0.3, 0.6, 0.0], [0.0] * 4, [0.0] * 4])
    assert metrics.au_pro(mask[None], amap[None]) == pytest.approx(47 / 72, abs=1e-12)
    # A 2-D (H, W) pair is read as one image.
    assert metrics.au_pro(mask, amap) == pytest.approx(47 / 72, abs=1e-12)

    fpr, pro, thresholds = metrics.pro_curve(mask, amap)
    np.testing.assert_allclose(fpr, [0, 0, 1 / 12, 1 / 12, 2 / 12, 2 / 12, 2 / 12, 1])
    np.testing.assert_allclose(pro, [0, 0.25, 0.25, 0.5, 0.5, 0.75, 1, 1])
    np.testing.assert_allclose(thresholds, [np.inf, 0.9, 0.8, 0.7, 0.6, 0.5, 0.3, 0.0])


def _two_region_case(small_region_at: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    # 5x5 image: region A = 2x2 top-left scored .9; one extra anomalous pixel scored .2;
    # 20 normal px, two of them (corners) scored .5, the rest 0.
    mask = np.zeros((5, 5), dtype=np.uint8)
    mask[:2, :2] = 1
    mask[small_region_at] = 1
    amap = np.zeros((5, 5))
    amap[:2, :2] = 0.9
    amap[small_region_at] = 0.2
    amap[0, 4] = amap[4, 0] = 0.5
    return mask[None], amap[None]


def test_au_pro_regions_weigh_equally_golden() -> None:
    # Pixel (4, 4) is a separate 1-px region B. Regions weigh equally, whatever their size:
    #   t=.9: PRO = mean(1, 0) = 1/2, FPR 0;   t=.5: PRO 1/2, FPR 2/20 = .1
    #   t=.2: PRO 1, FPR .1;                   t=0 : PRO 1, FPR 1
    # Area: .1 * 1/2 + .2 * 1 = .25 -> .25 / .3 = 5/6.
    # (Pooling pixels instead would give PRO 4/5 at t=.9 and 14/15.)
    mask, amap = _two_region_case((4, 4))
    assert metrics.au_pro(mask, amap) == pytest.approx(5 / 6, abs=1e-12)


def test_au_pro_regions_are_eight_connected_golden() -> None:
    # Pixel (2, 2) touches A's corner (1, 1) diagonally, so with 8-connectivity A and it form
    # ONE region of 5 px: t=.9 -> PRO 4/5 at FPR 0..0.1, then PRO 1.
    # Area: .1 * 4/5 + .2 * 1 = .28 -> .28 / .3 = 14/15. (4-connectivity would give 5/6.)
    mask, amap = _two_region_case((2, 2))
    assert metrics.au_pro(mask, amap) == pytest.approx(14 / 15, abs=1e-12)


def _interpolation_case() -> tuple[np.ndarray, np.ndarray]:
    # 3x4 image: one region of 2 px (top-left pair) scored .9 and .5; 10 normal px:
    # two .7, two .5 (tied with the anomalous .5), six .1.
    mask = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    amap = np.array([[0.9, 0.5, 0.7, 0.7], [0.5, 0.5, 0.1, 0.1], [0.1, 0.1, 0.1, 0.1]])
    return mask[None], amap[None]


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        # Curve: (0,0) (0,.5) (.2,.5) (.4,1) (1,1); the tie at t=.5 makes a slanted segment.
        # .3: [0,.2] at .5 -> .1; PRO(.3) interpolated = .5 + (.1/.2) * .5 = .75;
        #     [.2,.3] trapezoid = .1 * (.5 + .75) / 2 = .0625; (.1 + .0625) / .3 = 13/24.
        #     (Without interpolation: .5 with a step, 1/3 if the partial segment were dropped.)
        (0.3, 13 / 24),
        # .2: the limit falls on a curve point: .1 / .2 = 1/2.
        (0.2, 1 / 2),
        # .4: .1 + .2 * (.5 + 1) / 2 = .25 -> .25 / .4 = 5/8.
        (0.4, 5 / 8),
        # 1.0: .25 + .6 * 1 = .85.
        (1.0, 0.85),
    ],
)
def test_au_pro_interpolates_at_limit_golden(limit: float, expected: float) -> None:
    mask, amap = _interpolation_case()
    assert metrics.au_pro(mask, amap, integration_limit=limit) == pytest.approx(expected, abs=1e-12)


def test_au_pro_two_images_pooled_golden() -> None:
    # Image 1 (4x4): region 2x2 scored .7, 12 normal px at 0. Image 2 (4x4): no anomaly,
    # its top row (4 px) scored .9, 12 px at 0. Normal pixels pooled: 28.
    #   t=.9: PRO 0, FPR 4/28 = 1/7;  t=.7: PRO 1, FPR 1/7;  t=0: PRO 1, FPR 1.
    # Area: (.3 - 1/7) * 1 -> / .3 = 1 - 10/21 = 11/21. Image 1 alone would score 1.0.
    masks = np.zeros((2, 4, 4), dtype=np.uint8)
    masks[0, :2, :2] = 1
    maps = np.zeros((2, 4, 4))
    maps[0, :2, :2] = 0.7
    maps[1, 0, :] = 0.9
    assert metrics.au_pro(masks, maps) == pytest.approx(11 / 21, abs=1e-12)
    assert metrics.au_pro(masks[:1], maps[:1]) == pytest.approx(1.0, abs=1e-12)


def test_au_pro_perfect_inverted_and_constant() -> None:
    rng = np.random.default_rng(0)
    masks = np.zeros((3, 16, 16), dtype=np.uint8)
    masks[0, 2:6, 3:9] = 1
    masks[1, 10:12, 10:15] = 1
    noise = rng.random(masks.shape)
    # Every anomalous pixel above every normal one: PRO reaches 1 at FPR 0.
    assert metrics.au_pro(masks, noise + 2 * masks) == pytest.approx(1.0, abs=1e-12)
    # Every anomalous pixel below every normal one: PRO stays 0 until FPR = 1.
    assert metrics.au_pro(masks, noise - 2 * masks) == pytest.approx(0.0, abs=1e-12)
    # Constant map: one threshold, curve (0,0)-(1,1); area to .3 is .045 -> .15.
    assert metrics.au_pro(masks, np.ones(masks.shape)) == pytest.approx(0.15, abs=1e-12)


def _brute_force_au_pro(masks: np.ndarray, maps: np.ndarray, limit: float) -> float:
    """Loop over thresholds; regions and FPR exactly as the MVTec AD definition states."""
    regions = []
    for index, mask in enumerate(masks):
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(index, labelled == k) for k in range(1, count + 1)]
    normal_scores = maps[masks == 0]
    fpr, pro = [0.0], [0.0]
    for threshold in np.unique(maps)[::-1]:
        fpr.append(float(np.mean(normal_scores >= threshold)))
        pro.append(float(np.mean([np.mean(maps[i][region] >= threshold) for i, region in regions])))
    fpr_arr, pro_arr = np.array(fpr), np.array(pro)
    inside = fpr_arr <= limit
    x, y = list(fpr_arr[inside]), list(pro_arr[inside])
    if x[-1] < limit:
        k = int(inside.sum())
        slope = (pro_arr[k] - pro_arr[k - 1]) / (fpr_arr[k] - fpr_arr[k - 1])
        y.append(pro_arr[k - 1] + (limit - fpr_arr[k - 1]) * slope)
        x.append(limit)
    area = sum((x[i + 1] - x[i]) * (y[i + 1] + y[i]) / 2 for i in range(len(x) - 1))
    return area / limit


@pytest.mark.parametrize("seed", range(6))
def test_au_pro_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    masks = (rng.random((3, 10, 10)) < 0.15).astype(np.uint8)
    masks[0, 1, 1] = 1
    # Rounded scores create many ties between normal and anomalous pixels.
    maps = np.round(rng.random(masks.shape) + 0.6 * rng.random() * masks, 1)
    for limit in (0.05, 0.3, 1.0):
        assert metrics.au_pro(masks, maps, integration_limit=limit) == pytest.approx(
            _brute_force_au_pro(masks, maps, limit), abs=1e-12
        )


def test_au_pro_binned_matches_exact() -> None:
    rng = np.random.default_rng(1)
    masks = np.zeros((4, 32, 32), dtype=np.uint8)
    masks[0, 4:12, 4:10] = 1
    masks[2, 20:30, 15:18] = 1
    masks[3, 0:3, 0:3] = 1
    maps = ndimage.gaussian_filter(rng.random(masks.shape), sigma=(0, 1, 1)) + 0.3 * masks
    exact = metrics.au_pro(masks, maps)
    assert metrics.au_pro(masks, maps, num_thresholds=20_000) == pytest.approx(exact, abs=2e-3)
    assert abs(metrics.au_pro(masks, maps, num_thresholds=5) - exact) > 1e-3  # coarse really is coarse
    # When every score sits on a bin edge, binning loses nothing.
    integer_maps = np.round(maps * 10).astype(np.int64)
    n_edges = int(integer_maps.max() - integer_maps.min()) + 1
    assert metrics.au_pro(masks, integer_maps, num_thresholds=n_edges) == pytest.approx(
        metrics.au_pro(masks, integer_maps), abs=1e-12
    )


def test_au_pro_without_regions_warns_and_returns_nan() -> None:
    with pytest.warns(RuntimeWarning, match="no anomalous region"):
        value = metrics.au_pro(np.zeros((2, 4, 4)), np.random.default_rng(0).random((2, 4, 4)))
    assert np.isnan(value)


# --------------------------------------------------------------------------- brute-force cross-checks


def _random_labels_scores(seed: int, n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.4).astype(int)
    labels[:2] = [0, 1]
    scores = np.round(rng.random(n) + 0.5 * labels, 1)  # ties on purpose
    return labels, scores


@pytest.mark.parametrize("seed", range(5))
def test_image_auroc_matches_pairwise_count(seed: int) -> None:
    labels, scores = _random_labels_scores(seed)
    pairs = list(itertools.product(scores[labels == 1], scores[labels == 0]))
    expected = sum(1.0 if a > n else 0.5 if a == n else 0.0 for a, n in pairs) / len(pairs)
    assert metrics.image_auroc(labels, scores) == pytest.approx(expected, abs=1e-12)


def _brute_best_f1(labels: np.ndarray, scores: np.ndarray) -> float:
    best = 0.0
    for threshold in np.unique(scores):
        predicted = scores >= threshold
        true_pos = np.sum(predicted & (labels == 1))
        denominator = predicted.sum() + (labels == 1).sum()
        best = max(best, 2 * true_pos / denominator if denominator else 0.0)
    return float(best)


@pytest.mark.parametrize("seed", range(5))
def test_f1_max_matches_threshold_loop(seed: int) -> None:
    labels, scores = _random_labels_scores(seed)
    assert metrics.f1_max(labels, scores) == pytest.approx(_brute_best_f1(labels, scores), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_pixel_metrics_match_brute_force_and_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    masks = (rng.random((3, 9, 11)) < 0.2).astype(np.uint8)
    maps = np.round(rng.random(masks.shape) + 0.4 * masks, 2).astype(np.float32)
    flat_masks, flat_maps = masks.ravel(), maps.ravel()
    # Dice over pooled pixels is F1 over pixels.
    assert metrics.best_dice(masks, maps) == pytest.approx(_brute_best_f1(flat_masks, flat_maps), abs=1e-12)
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(flat_masks, flat_maps), abs=1e-12)
    assert metrics.pixel_ap(masks, maps) == pytest.approx(average_precision_score(flat_masks, flat_maps), abs=1e-12)
    bundle = metrics.pixel_metrics(masks, maps)
    assert set(bundle) == {"pixel_auroc", "pixel_ap", "pixel_aupro", "pixel_best_dice"}
    assert bundle["pixel_aupro"] == pytest.approx(metrics.au_pro(masks, maps), abs=1e-12)
    assert bundle["pixel_best_dice"] == pytest.approx(metrics.best_dice(masks, maps), abs=1e-12)


def test_image_metrics_bundle() -> None:
    labels, scores = _random_labels_scores(0)
    bundle = metrics.image_metrics(labels, scores)
    assert bundle == {
        "image_auroc": pytest.approx(roc_auc_score(labels, scores)),
        "image_ap": pytest.approx(average_precision_score(labels, scores)),
        "image_f1_max": pytest.approx(_brute_best_f1(labels, scores)),
    }
    perfect = metrics.image_metrics([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert perfect == {"image_auroc": 1.0, "image_ap": 1.0, "image_f1_max": 1.0}


# --------------------------------------------------------------------------- errors


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(3,\).*\(4,\)"):
        metrics.image_auroc([0, 1, 1], [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match=r"\(2, 8, 8\).*\(2, 4, 4\)"):
        metrics.pixel_metrics(np.zeros((2, 8, 8)), np.zeros((2, 4, 4)))


def test_labels_must_be_binary() -> None:
    with pytest.raises(ValueError, match=r"0 \(normal\) or 1 \(anomalous\).*2"):
        metrics.image_ap([0, 1, 2], [0.1, 0.2, 0.3])
    masks = np.zeros((1, 4, 4), dtype=np.uint8)
    masks[0, 0, 0] = 255
    with pytest.raises(ValueError, match="mask > 0"):
        metrics.pixel_auroc(masks, np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="0 \\(normal\\) or 1"):
        metrics.best_dice(np.full((1, 2, 2), 0.5), np.zeros((1, 2, 2)))


def test_single_class_says_which_is_missing() -> None:
    with pytest.raises(ValueError, match="no anomalous"):
        metrics.image_auroc([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="no normal"):
        metrics.image_auroc([1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="no anomalous"):
        metrics.pixel_auroc(np.zeros((1, 3, 3)), np.zeros((1, 3, 3)))
    with pytest.raises(ValueError, match="no normal"):
        metrics.au_pro(np.ones((1, 3, 3)), np.zeros((1, 3, 3)))


def test_nan_scores_rejected() -> None:
    with pytest.raises(ValueError, match="NaN"):
        metrics.f1_max([0, 1], [0.1, np.nan])
    maps = np.zeros((1, 3, 3))
    maps[0, 1, 1] = np.nan
    masks = np.zeros((1, 3, 3))
    masks[0, 0, 0] = 1
    with pytest.raises(ValueError, match="maps contains NaN"):
        metrics.pixel_metrics(masks, maps)


def test_other_bad_arguments() -> None:
    mask, amap = _interpolation_case()
    with pytest.raises(ValueError, match="integration_limit"):
        metrics.au_pro(mask, amap, integration_limit=0.0)
    with pytest.raises(ValueError, match="num_thresholds"):
        metrics.au_pro(mask, amap, num_thresholds=1)
    with pytest.raises(ValueError, match="1-D"):
        metrics.image_auroc(np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        metrics.pixel_auroc(np.array([0, 1]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="real numbers"):
        metrics.image_auroc([0, 1], ["a", "b"])
