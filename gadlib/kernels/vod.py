"""Value-order decomposition (VOD) of features: the two readings of the abstract, as pure functions.

Any set of numbers is exactly its *sorted values* plus the *order* that puts them back in place.
VOD (2026; only the abstract is public) suppresses the category-, defect- and domain-specific part of
residual features by treating the two parts differently. Two readings:

(A) **per channel, over positions** -- for each channel, the values it takes across the patches of an
    image are sorted; the *order* (which patch holds which rank) is kept, the *values* are replaced or
    normalised (:func:`channel_vod`): by plain ranks, by fixed quantiles of a standard normal, or by a
    reference's sorted values (quantile mapping). What stays is where each patch ranks, not how large
    the channel is in this domain.
(B) **per position, over channels** -- for each patch, its residual magnitudes are sorted across
    channels; the *channel order* is dropped (or weakened to order within channel groups)
    (:func:`position_vod`). What stays is how much a patch deviates, not in which channels.

:func:`decompose` / :func:`recombine` are the exact round trip both readings start from.
Shapes: features ``(..., L)`` with the decomposed axis last; helpers say which axis they use.
"""
from __future__ import annotations

import math

import torch

from gadlib.kernels.scoring import sorted_descending

CHANNEL_VALUES = ("ranks", "gaussian", "reference")
POSITION_MODES = ("magnitude", "signed", "grouped")


def decompose(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x (..., L)`` -> ``values`` (ascending along the last axis) and ``order`` (each element's rank).

    ``recombine(values, order)`` gives ``x`` back exactly. Ties keep their original order (stable).
    """
    values, index = torch.sort(x, dim=-1, stable=True)
    order = torch.empty_like(index)
    order.scatter_(-1, index, torch.arange(x.shape[-1], device=x.device).expand_as(index))
    return values, order


def recombine(values: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Put sorted ``values (..., L)`` back in place: element i takes ``values[..., order[..., i]]``."""
    if values.shape[-1] != order.shape[-1]:
        raise ValueError(f"values and order differ in length: {values.shape[-1]} and {order.shape[-1]}")
    return torch.gather(values.expand(order.shape), -1, order)


def resample_sorted(sorted_values: torch.Tensor, length: int) -> torch.Tensor:
    """Sorted values ``(..., M)`` -> ``(..., length)`` at the same quantiles (linear interpolation)."""
    m = sorted_values.shape[-1]
    if m == length:
        return sorted_values
    if m < 1 or length < 1:
        raise ValueError(f"need at least one value and length >= 1, got {m} and {length}")
    position = torch.linspace(0, m - 1, length, device=sorted_values.device, dtype=sorted_values.dtype)
    low = position.floor().long().clamp(max=m - 1)
    high = (low + 1).clamp(max=m - 1)
    weight = position - low
    return sorted_values[..., low] * (1 - weight) + sorted_values[..., high] * weight


def channel_vod(features: torch.Tensor, values: str = "ranks", reference: torch.Tensor | None = None) -> torch.Tensor:
    """Reading (A): keep each channel's order over positions, replace its values.

    Args:
        features: ``(B, C, N)`` -- C channels over N positions (patches) per image.
        values: ``"ranks"`` (rank / (N - 1), in [0, 1]), ``"gaussian"`` (standard-normal quantiles at
            (rank + 0.5) / N) or ``"reference"`` (the reference's sorted values of the same channel,
            resampled to N quantiles: quantile mapping onto the reference).
        reference: ``(C, M)`` features of a reference image (e.g. a normal reference), for ``"reference"``.
    Returns:
        ``(B, C, N)``; within each channel the positions rank exactly as in ``features``.
    """
    if features.ndim != 3:
        raise ValueError(f"features must be (B, C, N), got {tuple(features.shape)}")
    if values not in CHANNEL_VALUES:
        raise ValueError(f"values must be one of {CHANNEL_VALUES}, got '{values}'")
    _, order = decompose(features)
    n = features.shape[-1]
    if values == "ranks":
        return order.to(features.dtype) / max(n - 1, 1)
    if values == "gaussian":
        quantiles = (torch.arange(n, device=features.device, dtype=features.dtype) + 0.5) / n
        return recombine(math.sqrt(2) * torch.erfinv(2 * quantiles - 1), order)
    if reference is None or reference.ndim != 2 or reference.shape[0] != features.shape[1]:
        raise ValueError(f"values='reference' needs reference (C={features.shape[1]}, M), "
                         f"got {None if reference is None else tuple(reference.shape)}")
    target = resample_sorted(torch.sort(reference, dim=-1).values, n).to(features.dtype)
    return recombine(target[None], order)


def position_vod(residuals: torch.Tensor, mode: str = "magnitude", groups: int = 4) -> torch.Tensor:
    """Reading (B): per position, sort over channels, dropping (or weakening) the channel order.

    Args:
        residuals: ``(N, C)`` residual features of N positions.
        mode: ``"magnitude"`` (sorted ``|r|``, descending: channel identity and sign dropped),
            ``"signed"`` (sorted signed values, descending: channel identity dropped), or ``"grouped"``
            (sorted ``|r|`` within each of ``groups`` consecutive channel groups: order only weakened).
        groups: number of channel groups for ``"grouped"`` (must divide C).
    Returns:
        ``(N, C)``, invariant to permuting channels (``"grouped"``: to permuting within a group).
    """
    if residuals.ndim != 2:
        raise ValueError(f"residuals must be (N, C), got {tuple(residuals.shape)}")
    if mode not in POSITION_MODES:
        raise ValueError(f"mode must be one of {POSITION_MODES}, got '{mode}'")
    if mode == "signed":
        return sorted_descending(residuals)
    magnitude = residuals.abs()
    if mode == "magnitude":
        return sorted_descending(magnitude)
    n, c = residuals.shape
    if groups < 1 or c % groups:
        raise ValueError(f"groups ({groups}) must divide the channel count ({c})")
    return sorted_descending(magnitude.reshape(n, groups, c // groups)).reshape(n, c)


# -- the readings on the shapes the methods use ------------------------------------------------------
VOD_CHANNEL = ("none", "ranks", "gaussian")          # reading (A) as a method hyper-parameter
VOD_POSITION = ("none",) + POSITION_MODES             # reading (B) as a method hyper-parameter
VOD_GROUPS = 4                                        # channel groups of the "grouped" reading (B)


def channel_vod_grid(features: torch.Tensor, values: str = "gaussian") -> torch.Tensor:
    """Reading (A) on a feature grid ``(B, C, H, W)``: per image and channel, over its H*W positions.

    ``values="none"`` returns ``features`` unchanged.
    """
    if values == "none":
        return features
    if features.ndim != 4:
        raise ValueError(f"features must be (B, C, H, W), got {tuple(features.shape)}")
    b, c, h, w = features.shape
    return channel_vod(features.reshape(b, c, h * w), values).reshape(b, c, h, w)


def position_vod_any(residuals: torch.Tensor, mode: str = "magnitude", channel_dim: int = -1,
                     groups: int = VOD_GROUPS) -> torch.Tensor:
    """Reading (B) on residuals of any shape, with the channels on ``channel_dim``.

    ``mode="none"`` returns ``residuals`` unchanged. Magnitude and signed modes keep each position's
    L2 norm, so a pure nearest-neighbour *distance* score cannot change under them.
    """
    if mode == "none":
        return residuals
    moved = residuals.movedim(channel_dim, -1)
    flat = position_vod(moved.reshape(-1, moved.shape[-1]), mode, groups)
    return flat.reshape(moved.shape).movedim(-1, channel_dim)


def check_vod(channel: str, position: str, owner: str) -> None:
    """``ValueError`` naming ``owner`` for an unknown reading (A) or (B) setting."""
    if channel not in VOD_CHANNEL:
        raise ValueError(f"{owner}: vod_channel must be one of {VOD_CHANNEL}, got '{channel}'")
    if position not in VOD_POSITION:
        raise ValueError(f"{owner}: vod_position must be one of {VOD_POSITION}, got '{position}'")
