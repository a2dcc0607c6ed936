"""Image-level (global) residual: a query's feature statistics against the nearest reference's.

Every patch score in the study is local: it asks whether some patch of the query is far from every normal
patch. A *global* defect (a whole image that is slightly finer, flatter or darker, as the textile set's
global defects are) moves no single patch far, but it moves the statistics of the whole feature map. This
kernel compares those statistics, per backbone level:

1. :func:`channel_statistics` -- each channel's mean and standard deviation over the positions of one
   image's map, ``(B, C, H, W) -> (B, 2C)``;
2. :func:`patch_spread` -- the references' own per-channel spread over all their positions (the unit of
   each channel: a change of one typical patch-to-patch difference weighs 1);
3. :func:`statistics_distance` -- the root-mean-square over the ``2C`` statistics of their difference in
   those units, against each reference; :func:`image_residual` keeps the nearest reference per level and
   averages the levels.

A reference scored against itself gets 0; the score does not depend on the other queries.
"""
from __future__ import annotations

from typing import Sequence

import torch

EPS = 1e-6      # relative floor of a channel's spread (a constant channel then weighs ~nothing)


def channel_statistics(features: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W) -> (B, 2C)``: per channel, the mean then the (population) standard deviation over positions."""
    if features.ndim != 4:
        raise ValueError(f"expected features (B, C, H, W), got {tuple(features.shape)}")
    flat = features.flatten(2).double()
    return torch.cat([flat.mean(2), flat.std(2, correction=0)], dim=1)


def patch_spread(references: torch.Tensor) -> torch.Tensor:
    """``(K, C, H, W) -> (2C,)``: the standard deviation of each channel over every position of every
    reference, used as the unit of both that channel's mean and its standard deviation."""
    if references.ndim != 4 or references.shape[0] < 1:
        raise ValueError(f"expected reference features (K >= 1, C, H, W), got {tuple(references.shape)}")
    spread = references.transpose(0, 1).flatten(1).double().std(1, correction=0)
    floor = EPS * spread.max().clamp_min(EPS)
    return spread.clamp_min(floor).repeat(2)


def statistics_distance(queries: torch.Tensor, references: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """``(N, S), (K, S), (S,) -> (N, K)``: root-mean-square over ``S`` statistics of ``(q - r) / unit``."""
    if queries.ndim != 2 or references.ndim != 2 or queries.shape[1] != references.shape[1] \
            or unit.shape != (queries.shape[1],):
        raise ValueError(f"expected (N, S), (K, S) and (S,), got {tuple(queries.shape)}, "
                         f"{tuple(references.shape)} and {tuple(unit.shape)}")
    if (unit <= 0).any():
        raise ValueError("every unit must be positive")
    scaled_q, scaled_r = queries / unit, references / unit
    return torch.cdist(scaled_q, scaled_r) / queries.shape[1] ** 0.5


def image_residual(query_levels: Sequence[torch.Tensor], reference_levels: Sequence[torch.Tensor]) -> torch.Tensor:
    """Global score of each query: per level, the distance of its statistics to the nearest reference's
    (:func:`statistics_distance` in units of :func:`patch_spread`), averaged over levels.

    Shapes: ``[(N, C_l, H_l, W_l)], [(K, C_l, H'_l, W'_l)] -> (N,)`` (float64); sizes may differ between
    queries and references, channels may not.
    """
    if len(query_levels) != len(reference_levels) or not query_levels:
        raise ValueError(f"expected the same (non-zero) number of levels, got {len(query_levels)} and "
                         f"{len(reference_levels)}")
    total = None
    for query, reference in zip(query_levels, reference_levels):
        if query.shape[1] != reference.shape[1]:
            raise ValueError(f"channel counts differ: {query.shape[1]} and {reference.shape[1]}")
        distances = statistics_distance(channel_statistics(query), channel_statistics(reference),
                                        patch_spread(reference))
        nearest = distances.min(1).values
        total = nearest if total is None else total + nearest
    return total / len(query_levels)
