"""Anomaly-detection metrics: plain functions over numpy arrays.

Image level (one score per image): AUROC, AP and F1-max, backed by scikit-learn.
Pixel level (one map per image): AUROC, AP, AU-PRO (MVTec AD definition) and best Dice.

Pixel metrics see tens of millions of pixels, so they avoid scikit-learn's argsort of the whole
array: pixels are split once into anomalous and normal scores, each side is sorted with
``np.sort``, and counts at every threshold come from ``np.searchsorted``. The results are exactly
those of ``roc_auc_score`` / ``average_precision_score`` on the flattened arrays (the tests check).

Conventions: higher score means more anomalous; labels and masks are {0, 1} with 1 = anomalous.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

__all__ = [
    "image_auroc", "image_ap", "f1_max", "image_metrics",
    "pixel_auroc", "pixel_ap", "pro_curve", "au_pro", "best_dice", "pixel_metrics",
]

# 8-connectivity, as in the MVTec AD evaluation code.
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


# --------------------------------------------------------------------------- validation


def _check_scores(scores: np.ndarray, name: str) -> np.ndarray:
    """Return ``scores`` as a real-valued array; raise on a non-numeric dtype, NaN or inf."""
    scores = np.asarray(scores)
    if scores.dtype == bool or scores.dtype.kind not in "fiu":
        raise ValueError(f"{name} must hold real numbers, got dtype {scores.dtype}; cast with .astype(float).")
    if scores.dtype.kind == "f" and not np.isfinite(scores).all():
        raise ValueError(
            f"{name} contains NaN or inf; fix the method that produced it (e.g. a 0/0 normalisation) "
            "before computing metrics."
        )
    return scores


def _check_binary(values: np.ndarray, name: str) -> np.ndarray:
    """Return ``values`` as a boolean array (True = anomalous); raise if not all in {0, 1}."""
    values = np.asarray(values)
    if values.dtype == bool:
        return values
    if values.dtype.kind in "iu":
        ok = values.size == 0 or (values.min() >= 0 and values.max() <= 1)
    elif values.dtype.kind == "f":
        ok = bool(((values == 0) | (values == 1)).all())
    else:
        ok = False
    if not ok:
        found = np.unique(values.ravel()[:100_000])[:10]
        raise ValueError(
            f"{name} must be 0 (normal) or 1 (anomalous); found values such as {found.tolist()}. "
            "Binarise first, e.g. (mask > 0).astype(np.uint8) for 0/255 masks."
        )
    return values != 0


def _check_same_shape(truth: np.ndarray, scores: np.ndarray, truth_name: str, score_name: str) -> None:
    if truth.shape != scores.shape:
        raise ValueError(
            f"{truth_name} has shape {truth.shape} but {score_name} has shape {scores.shape}; "
            f"they must match (resize the {score_name} to the {truth_name} size)."
        )


def _require_classes(n_positive: int, n_negative: int, what: str, need_negative: bool = True) -> None:
    if n_positive == 0:
        raise ValueError(
            f"{what}: no anomalous (1) sample is present, only normal (0) ones; the metric is undefined. "
            "Evaluate on a set that contains anomalies."
        )
    if need_negative and n_negative == 0:
        raise ValueError(
            f"{what}: no normal (0) sample is present, only anomalous (1) ones; the metric is undefined. "
            "Evaluate on a set that contains normal samples."
        )


def _image_inputs(labels: np.ndarray, scores: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    scores = _check_scores(scores, "scores")
    if labels.ndim != 1 or scores.ndim != 1:
        raise ValueError(
            f"{what}: labels and scores must be 1-D (one per image), got shapes {labels.shape} and {scores.shape}."
        )
    _check_same_shape(labels, scores, "labels", "scores")
    is_anomalous = _check_binary(labels, "labels")
    n_positive = int(is_anomalous.sum())
    _require_classes(n_positive, is_anomalous.size - n_positive, what)
    return is_anomalous.astype(np.int8), scores


def _pixel_inputs(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    masks = np.asarray(masks)
    maps = _check_scores(maps, "maps")
    _check_same_shape(masks, maps, "masks", "maps")
    if maps.ndim not in (2, 3):
        raise ValueError(f"maps must be (N, H, W) or (H, W), got shape {maps.shape}.")
    return _check_binary(masks, "masks"), maps


# --------------------------------------------------------------------------- image level


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of image scores.

    Args:
        labels: ``(N,)`` ground truth, 1 = anomalous.
        scores: ``(N,)`` anomaly scores, higher = more anomalous.

    Returns:
        AUROC in [0, 1]; ties count one half.
    """
    labels, scores = _image_inputs(labels, scores, "image_auroc")
    return float(roc_auc_score(labels, scores))


def image_ap(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision of image scores (scikit-learn's step-wise definition, no interpolation)."""
    labels, scores = _image_inputs(labels, scores, "image_ap")
    return float(average_precision_score(labels, scores))


def f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    """Best F1 over all thresholds of the precision-recall curve (a 0/0 F1 counts as 0).

    Note: the threshold is chosen on the evaluated data itself, so this is an optimistic,
    oracle-threshold figure, as it is in the papers that report it.
    """
    labels, scores = _image_inputs(labels, scores, "f1_max")
    precision, recall, _ = precision_recall_curve(labels, scores)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    return float(f1.max())


# --------------------------------------------------------------------------- pixel level


def _split_sorted(is_anomalous: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Anomalous and normal pixel scores, each sorted ascending (one copy of the map in total)."""
    anomalous = np.sort(maps[is_anomalous], axis=None)
    normal = np.sort(maps[~is_anomalous], axis=None)
    return anomalous, normal


def _distinct_starts(sorted_values: np.ndarray) -> np.ndarray:
    """Index of the first element of each run of equal values in an ascending array."""
    is_start = np.empty(sorted_values.size, dtype=bool)
    is_start[:1] = True
    np.not_equal(sorted_values[1:], sorted_values[:-1], out=is_start[1:])
    return np.flatnonzero(is_start)


def _auroc_sorted(anomalous: np.ndarray, normal: np.ndarray) -> float:
    # Mann-Whitney U: each anomalous pixel wins against lower normals and draws (1/2) against ties.
    below = np.searchsorted(normal, anomalous, side="left")
    below_or_tied = np.searchsorted(normal, anomalous, side="right")
    wins = below.sum(dtype=np.float64) + 0.5 * (below_or_tied - below).sum(dtype=np.float64)
    return float(wins / (float(anomalous.size) * float(normal.size)))


def _counts_at_anomalous_thresholds(anomalous: np.ndarray, normal: np.ndarray):
    """For each distinct anomalous score t (ascending): #anomalous >= t, #normal >= t, #anomalous == t.

    Only thresholds at anomalous scores matter for AP and Dice: between two of them the true
    positives stay fixed while false positives can only grow as the threshold drops.
    """
    starts = _distinct_starts(anomalous)
    thresholds = anomalous[starts]
    true_pos = (anomalous.size - starts).astype(np.float64)
    false_pos = (normal.size - np.searchsorted(normal, thresholds, side="left")).astype(np.float64)
    tied = np.diff(np.append(starts, anomalous.size)).astype(np.float64)
    return true_pos, false_pos, tied


def _ap_sorted(anomalous: np.ndarray, normal: np.ndarray) -> float:
    true_pos, false_pos, tied = _counts_at_anomalous_thresholds(anomalous, normal)
    precision = true_pos / (true_pos + false_pos)
    return float(np.sum(tied / anomalous.size * precision))


def _best_dice_sorted(anomalous: np.ndarray, normal: np.ndarray) -> float:
    true_pos, false_pos, _ = _counts_at_anomalous_thresholds(anomalous, normal)
    # Dice = 2TP / (2TP + FP + FN) and TP + FN is the number of anomalous pixels.
    return float(np.max(2 * true_pos / (true_pos + false_pos + anomalous.size)))


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float:
    """Pixel AUROC over all pixels pooled.

    Args:
        masks: ``(N, H, W)`` ground truth in {0, 1}.
        maps: ``(N, H, W)`` anomaly maps, same shape.

    Returns:
        AUROC in [0, 1]; identical to ``roc_auc_score(masks.ravel(), maps.ravel())``.
    """
    is_anomalous, maps = _pixel_inputs(masks, maps)
    anomalous, normal = _split_sorted(is_anomalous, maps)
    _require_classes(anomalous.size, normal.size, "pixel_auroc")
    return _auroc_sorted(anomalous, normal)


def pixel_ap(masks: np.ndarray, maps: np.ndarray) -> float:
    """Pixel average precision over all pixels pooled (same as scikit-learn's on flat arrays)."""
    is_anomalous, maps = _pixel_inputs(masks, maps)
    anomalous, normal = _split_sorted(is_anomalous, maps)
    _require_classes(anomalous.size, normal.size, "pixel_ap", need_negative=False)
    return _ap_sorted(anomalous, normal)


def best_dice(masks: np.ndarray, maps: np.ndarray) -> float:
    """Best Dice over thresholds, with all pixels of all images pooled (MedIAnomaly style).

    The threshold is chosen on the evaluated data (an oracle figure), as in the benchmark.
    """
    is_anomalous, maps = _pixel_inputs(masks, maps)
    anomalous, normal = _split_sorted(is_anomalous, maps)
    _require_classes(anomalous.size, normal.size, "best_dice", need_negative=False)
    return _best_dice_sorted(anomalous, normal)


# --------------------------------------------------------------------------- AU-PRO


def _region_pixels(is_anomalous: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores of anomalous pixels and each one's weight 1 / (n_regions * region_size).

    Regions are the 8-connected components of each image's mask, pooled over all images, so
    summing the weights of the pixels above a threshold gives the mean per-region overlap.
    """
    if is_anomalous.ndim == 2:
        is_anomalous, maps = is_anomalous[None], maps[None]
    scores, sizes = [], []
    n_regions = 0
    for image_mask, image_map in zip(is_anomalous, maps):
        if not image_mask.any():
            continue
        region_ids, n_image_regions = ndimage.label(image_mask, structure=_EIGHT_CONNECTED)
        region_sizes = np.bincount(region_ids.ravel())
        sizes.append(region_sizes[region_ids[image_mask]])
        scores.append(image_map[image_mask])
        n_regions += n_image_regions
    if not scores:
        return np.empty(0, dtype=maps.dtype), np.empty(0)
    return np.concatenate(scores), 1.0 / (n_regions * np.concatenate(sizes).astype(np.float64))


def _pro_curve_exact(anomalous, weights, normal, n_normal, max_fpr):
    """PRO and FPR at every distinct score, descending threshold, from sorted-array counts."""
    if max_fpr < 1.0:
        # Only thresholds down to the first one whose FPR exceeds max_fpr shape the integral;
        # keeping a few extra normal pixels is harmless, so round the count up.
        n_keep = min(n_normal, math.ceil(max_fpr * n_normal) + 1)
        normal.partition(n_normal - n_keep)  # in place: ``normal`` is already a private copy
        cut = normal[n_normal - n_keep]
        normal = normal[normal >= cut]
        keep = anomalous >= cut
        anomalous, weights = anomalous[keep], weights[keep]
    normal = np.sort(normal)
    order = np.argsort(anomalous, kind="stable")
    anomalous = anomalous[order]
    # weight_above[i] = total weight of anomalous pixels at sorted position >= i.
    weight_above = np.append(np.cumsum(weights[order][::-1])[::-1], 0.0)
    thresholds = np.unique(np.concatenate([anomalous, normal]))[::-1]
    fpr = (normal.size - np.searchsorted(normal, thresholds, side="left")) / n_normal
    pro = weight_above[np.searchsorted(anomalous, thresholds, side="left")]
    return fpr, np.minimum(pro, 1.0), thresholds


def _pro_curve_binned(is_anomalous, maps, anomalous, weights, n_normal, num_thresholds):
    """PRO and FPR at ``num_thresholds`` evenly spaced thresholds (descending), in bounded memory."""
    thresholds = np.linspace(float(maps.min()), float(maps.max()), num_thresholds)

    step = (thresholds[-1] - thresholds[0]) / (num_thresholds - 1)

    def bin_index(scores: np.ndarray) -> np.ndarray:
        # Largest j with thresholds[j] <= score, so the pixel counts for every threshold <= j.
        # Arithmetic binning is linear time; the two corrections undo floating-point rounding.
        if step == 0:
            return np.full(scores.size, num_thresholds - 1, dtype=np.intp)
        index = np.clip(((scores - thresholds[0]) / step).astype(np.intp), 0, num_thresholds - 1)
        index -= thresholds[index] > scores
        upper = np.minimum(index + 1, num_thresholds - 1)
        index += (upper > index) & (thresholds[upper] <= scores)
        return index

    normal_hist = np.zeros(num_thresholds, dtype=np.int64)
    flat_masks, flat_maps = is_anomalous.reshape(-1), maps.reshape(-1)
    chunk = 1 << 22
    for start in range(0, flat_maps.size, chunk):
        normal_scores = flat_maps[start : start + chunk][~flat_masks[start : start + chunk]]
        normal_hist += np.bincount(bin_index(normal_scores), minlength=num_thresholds)
    pro_hist = np.bincount(bin_index(anomalous), weights=weights, minlength=num_thresholds)
    fpr = np.cumsum(normal_hist[::-1]) / n_normal
    pro = np.minimum(np.cumsum(pro_hist[::-1]), 1.0)
    return fpr, pro, thresholds[::-1]


def _pro_curve_checked(is_anomalous, maps, num_thresholds, max_fpr):
    anomalous, weights = _region_pixels(is_anomalous, maps)
    n_normal = int(is_anomalous.size - anomalous.size)
    if anomalous.size == 0:
        warnings.warn(
            "AU-PRO: the masks hold no anomalous region, so PRO is undefined; returning NaN. "
            "Evaluate AU-PRO on a set that contains anomalous images with masks.",
            RuntimeWarning,
            stacklevel=3,
        )
        return np.empty(0), np.empty(0), np.empty(0)
    _require_classes(anomalous.size, n_normal, "AU-PRO (the FPR needs normal pixels)")
    if num_thresholds is None:
        fpr, pro, thresholds = _pro_curve_exact(anomalous, weights, maps[~is_anomalous], n_normal, max_fpr)
    else:
        if isinstance(num_thresholds, bool) or int(num_thresholds) != num_thresholds or num_thresholds < 2:
            raise ValueError(f"num_thresholds must be an integer >= 2 or None (exact), got {num_thresholds!r}.")
        fpr, pro, thresholds = _pro_curve_binned(
            is_anomalous, maps, anomalous, weights, n_normal, int(num_thresholds)
        )
    return np.r_[0.0, fpr], np.r_[0.0, pro], np.r_[np.inf, thresholds]


def pro_curve(
    masks: np.ndarray, maps: np.ndarray, num_thresholds: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-region-overlap (PRO) curve against the false-positive rate, MVTec AD definition.

    Args:
        masks: ``(N, H, W)`` or ``(H, W)`` ground truth in {0, 1}; regions are 8-connected components.
        maps: anomaly maps of the same shape.
        num_thresholds: ``None`` for the exact curve at every distinct score; otherwise that many
            evenly spaced thresholds between the lowest and highest score (an approximation).

    Returns:
        ``(fpr, pro, thresholds)``, ordered by increasing FPR (decreasing threshold), starting at
        (0, 0) with threshold ``inf``. Empty arrays (and a RuntimeWarning) when there is no region.
    """
    is_anomalous, maps = _pixel_inputs(masks, maps)
    return _pro_curve_checked(is_anomalous, maps, num_thresholds, max_fpr=1.0)


def _area_to_limit(fpr: np.ndarray, pro: np.ndarray, limit: float) -> float:
    """Trapezoid area under a non-decreasing curve from x = 0 to x = limit, interpolating at limit."""
    n_inside = int(np.searchsorted(fpr, limit, side="right"))  # points with fpr <= limit
    x, y = fpr[:n_inside], pro[:n_inside]
    if n_inside < fpr.size and x[-1] < limit:
        x0, y0, x1, y1 = fpr[n_inside - 1], pro[n_inside - 1], fpr[n_inside], pro[n_inside]
        x = np.append(x, limit)
        y = np.append(y, y0 + (limit - x0) * (y1 - y0) / (x1 - x0))
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def _au_pro_checked(is_anomalous, maps, integration_limit, num_thresholds) -> float:
    if not 0.0 < integration_limit <= 1.0:
        raise ValueError(f"integration_limit must be in (0, 1], got {integration_limit}; MVTec AD uses 0.3.")
    fpr, pro, _ = _pro_curve_checked(is_anomalous, maps, num_thresholds, max_fpr=integration_limit)
    if fpr.size == 0:
        return float("nan")
    return _area_to_limit(fpr, pro, integration_limit) / integration_limit


def au_pro(
    masks: np.ndarray,
    maps: np.ndarray,
    integration_limit: float = 0.3,
    num_thresholds: int | None = None,
) -> float:
    """Normalised area under the PRO curve up to an FPR limit (MVTec AD definition).

    Regions are the 8-connected components of every mask, pooled over all images of the set;
    PRO at a threshold is the mean over regions of the fraction of the region at or above it;
    FPR is the fraction of all normal pixels at or above it. The curve is integrated with the
    trapezoid rule from FPR 0 to ``integration_limit`` (interpolating PRO at the limit) and
    divided by the limit, so a perfect map scores 1.0 and a constant one limit / 2.

    Args:
        masks: ``(N, H, W)`` or ``(H, W)`` ground truth in {0, 1}.
        maps: anomaly maps of the same shape; higher = more anomalous.
        integration_limit: FPR upper bound in (0, 1]; 0.3 is the MVTec AD convention.
        num_thresholds: ``None`` (default) for the exact value over all distinct scores; an
            integer >= 2 for a binned approximation with evenly spaced thresholds.

    Returns:
        AU-PRO in [0, 1], or NaN (with a RuntimeWarning) when no mask has an anomalous pixel.
    """
    is_anomalous, maps = _pixel_inputs(masks, maps)
    return _au_pro_checked(is_anomalous, maps, integration_limit, num_thresholds)


# --------------------------------------------------------------------------- bundles


def image_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """All image-level metrics: ``image_auroc``, ``image_ap``, ``image_f1_max``."""
    return {
        "image_auroc": image_auroc(labels, scores),
        "image_ap": image_ap(labels, scores),
        "image_f1_max": f1_max(labels, scores),
    }


def pixel_metrics(masks: np.ndarray, maps: np.ndarray, integration_limit: float = 0.3) -> dict[str, float]:
    """All pixel-level metrics: ``pixel_auroc``, ``pixel_ap``, ``pixel_aupro``, ``pixel_best_dice``.

    Inputs are validated and the pixels split and sorted once, shared by AUROC, AP and Dice.
    """
    is_anomalous, maps = _pixel_inputs(masks, maps)
    anomalous, normal = _split_sorted(is_anomalous, maps)
    _require_classes(anomalous.size, normal.size, "pixel_metrics")
    return {
        "pixel_auroc": _auroc_sorted(anomalous, normal),
        "pixel_ap": _ap_sorted(anomalous, normal),
        "pixel_aupro": _au_pro_checked(is_anomalous, maps, integration_limit, None),
        "pixel_best_dice": _best_dice_sorted(anomalous, normal),
    }
