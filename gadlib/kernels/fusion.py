"""Label-free fusion of score channels with different units (e.g. a local patch score and a global one).

Each channel is calibrated on the k normal references alone: every reference is scored against the other
k - 1 (leave-one-out), which gives k scores of images known to be normal, and a query's score is expressed
against them. Neither the target's labels nor the other queries are looked at: a query's fused score
depends on itself and the references only.

The first channel is the method's own score and counts both ways, as a z-score with a floored spread::

    z = (s - mean(normal)) / spread,   spread = sqrt(var(normal) + (shrink * mean(|normal|))^2)

(with k = 2..8 normal scores the variance alone is a poor estimate: a channel whose few references happen
to agree gets a tiny spread and swamps the others; ``shrink = 0`` is the plain z-score). Every further
channel (the global evidence) is read one of two ways, ``others``:

* ``"z"`` -- the same z-score, added to the first: the plain sum of calibrated channels;
* ``"excess"`` -- only by how far the query rises above the *largest* normal score, in units of the normal
  scores' mean, ``max(0, s - max(normal)) / mean(|normal|)``, times ``weight``: a query whose statistics are
  no further from the references than theirs are from each other adds nothing, so a global channel that k
  references describe poorly (real images whose normal look varies) does not add its noise to every query,
  while an image unlike every reference still stands out.

``combine="sum"`` adds the terms, ``"max"`` keeps the largest. Invariants (tested): multiplying one
channel's scores (query and normal alike) by a positive constant changes nothing; a channel whose normal
scores are all equal is still well defined (z: its spread is the floor; excess: the excess over that
constant), and when they are all 0 the channel is left out (it carries no calibrated information).

At k = 1 there is no other reference to score the only one against: no channel can be calibrated, and
:func:`fuse` returns the first channel unchanged (callers put the method's own, local score first).
"""
from __future__ import annotations

from typing import Sequence

import torch

COMBINES = ("sum", "max")
READINGS = ("z", "excess")


def _as_tensor(values) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float64).reshape(-1)


def _checked(query, normal) -> tuple[torch.Tensor, torch.Tensor]:
    query, normal = _as_tensor(query), _as_tensor(normal)
    if normal.numel() < 2:
        raise ValueError(f"calibration needs at least 2 normal scores (k >= 2 references), got {normal.numel()}")
    if not (torch.isfinite(query).all() and torch.isfinite(normal).all()):
        raise ValueError("scores must be finite")
    return query, normal


def calibrate(query: torch.Tensor, normal: torch.Tensor, shrink: float = 0.5) -> torch.Tensor:
    """``(N,), (m,) -> (N,)``: query scores as z-scores against ``m >= 2`` normal (leave-one-out) scores."""
    query, normal = _checked(query, normal)
    if shrink < 0:
        raise ValueError(f"shrink must be >= 0, got {shrink}")
    spread = torch.sqrt(normal.var(correction=0) + (shrink * normal.abs().mean()) ** 2)
    if spread <= 0:                        # a constant channel at 0 with no floor: nothing to calibrate with
        return torch.zeros_like(query)
    return (query - normal.mean()) / spread


def excess(query: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
    """``(N,), (m,) -> (N,)``: how far each query rises above the largest normal score, in units of the normal
    scores' mean absolute value (0 at or below it)."""
    query, normal = _checked(query, normal)
    size = normal.abs().mean()
    if size <= 0:
        return torch.zeros_like(query)
    return (query - normal.max()).clamp_min(0) / size


def fuse(channels: Sequence[tuple[torch.Tensor, torch.Tensor]], shrink: float = 0.5, others: str = "excess",
         weight: float = 1.0, combine: str = "sum") -> torch.Tensor:
    """Fuse ``[(query (N,), normal (m,)), ...]`` channels into one ``(N,)`` score (float64): the first as a
    z-score, the others read as ``others`` and multiplied by ``weight`` (module docstring).

    With fewer than 2 normal scores (k = 1) the first channel's query scores come back unchanged.
    """
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {COMBINES}, got '{combine}'")
    if others not in READINGS:
        raise ValueError(f"others must be one of {READINGS}, got '{others}'")
    if weight < 0:
        raise ValueError(f"weight must be >= 0, got {weight}")
    if not channels:
        raise ValueError("fuse needs at least one channel")
    sizes = {_as_tensor(query).numel() for query, _ in channels}
    if len(sizes) != 1:
        raise ValueError(f"every channel must score the same queries, got sizes {sorted(sizes)}")
    if min(_as_tensor(normal).numel() for _, normal in channels) < 2:
        return _as_tensor(channels[0][0])
    (first_query, first_normal), *rest = channels
    terms = [calibrate(first_query, first_normal, shrink)]
    for query, normal in rest:
        reading = calibrate(query, normal, shrink) if others == "z" else excess(query, normal)
        terms.append(weight * reading)
    stacked = torch.stack(terms)
    return stacked.sum(0) if combine == "sum" else stacked.max(0).values
