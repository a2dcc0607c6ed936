"""Nearest-neighbour matching against a bank of reference features, and residual features.

All functions are pure and device-agnostic; memory stays bounded by chunking the queries and the bank,
so any number of references (k) fits: the largest intermediate is ``query_chunk x bank_chunk``.
"""
from __future__ import annotations

import torch

METRICS = ("l2", "cosine")
RESIDUAL_MODES = ("difference", "squared")


def nearest_neighbour(queries: torch.Tensor, bank: torch.Tensor, metric: str = "l2",
                      query_chunk: int = 4096, bank_chunk: int = 16384) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance from each query row to its nearest bank row.

    Args:
        queries: ``(N, D)``.
        bank: ``(M, D)`` reference features (all positions of all references).
        metric: ``"l2"`` (Euclidean distance) or ``"cosine"`` (``1 - cos``, in [0, 2]).
        query_chunk, bank_chunk: block sizes that bound memory.
    Returns:
        ``distances (N,)`` and ``indices (N,)`` into ``bank``.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got '{metric}'")
    if queries.ndim != 2 or bank.ndim != 2 or queries.shape[1] != bank.shape[1]:
        raise ValueError(f"expected queries (N, D) and bank (M, D), got {tuple(queries.shape)} and {tuple(bank.shape)}")
    if bank.shape[0] == 0:
        raise ValueError("the reference bank is empty")
    if metric == "cosine":
        queries = torch.nn.functional.normalize(queries, dim=1)
        bank = torch.nn.functional.normalize(bank, dim=1)
    else:
        bank_sq = (bank * bank).sum(1)
    best = torch.full((queries.shape[0],), float("inf"), dtype=queries.dtype, device=queries.device)
    best_idx = torch.zeros(queries.shape[0], dtype=torch.long, device=queries.device)
    for q0 in range(0, queries.shape[0], query_chunk):
        q = queries[q0:q0 + query_chunk]
        q_sq = (q * q).sum(1, keepdim=True) if metric == "l2" else None
        for b0 in range(0, bank.shape[0], bank_chunk):
            b = bank[b0:b0 + bank_chunk]
            dots = q @ b.T
            if metric == "l2":
                dist = (q_sq + bank_sq[b0:b0 + bank_chunk] - 2 * dots)
            else:
                dist = 1 - dots
            value, index = dist.min(dim=1)
            better = value < best[q0:q0 + len(q)]
            best[q0:q0 + len(q)] = torch.where(better, value, best[q0:q0 + len(q)])
            best_idx[q0:q0 + len(q)] = torch.where(better, index + b0, best_idx[q0:q0 + len(q)])
    if metric == "l2":
        best = best.clamp_min(0).sqrt()
    return best, best_idx


def residual(queries: torch.Tensor, bank: torch.Tensor, indices: torch.Tensor,
             mode: str = "difference") -> torch.Tensor:
    """Residual features: each query minus its matched bank row.

    ``mode="difference"`` gives ``q - b`` (the paper's residual), ``"squared"`` gives ``(q - b) ** 2``
    (ResAD's public code). Shapes: ``(N, D), (M, D), (N,) -> (N, D)``.
    """
    if mode not in RESIDUAL_MODES:
        raise ValueError(f"mode must be one of {RESIDUAL_MODES}, got '{mode}'")
    diff = queries - bank[indices]
    return diff if mode == "difference" else diff * diff


def nearest_per_group(queries: torch.Tensor, bank: torch.Tensor, group_size: int, metric: str = "l2",
                      query_chunk: int = 2048, bank_chunk: int = 16384,
                      return_index: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Distance from each query row to its nearest row *within each group* of the bank.

    The bank is ``G`` consecutive groups of ``group_size`` rows (e.g. all patches of one reference
    image). A running minimum over groups (``torch.cummin`` along dim 1) then gives the nearest-
    neighbour distance for the first 1, 2, ..., G references in one pass, which is how nested k-shot
    references are scored without matching the same patches again.

    Shapes: ``(N, D), (G * group_size, D) -> (N, G)``; same metrics as :func:`nearest_neighbour`.
    With ``return_index=True`` also the ``(N, G)`` bank rows of those nearest neighbours (see
    :func:`nearest_in_first`).
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got '{metric}'")
    if queries.ndim != 2 or bank.ndim != 2 or queries.shape[1] != bank.shape[1]:
        raise ValueError(f"expected queries (N, D) and bank (M, D), got {tuple(queries.shape)} and {tuple(bank.shape)}")
    if group_size < 1 or bank.shape[0] == 0 or bank.shape[0] % group_size:
        raise ValueError(f"bank rows ({bank.shape[0]}) must be a positive multiple of group_size ({group_size})")
    if metric == "cosine":
        queries = torch.nn.functional.normalize(queries, dim=1)
        bank = torch.nn.functional.normalize(bank, dim=1)
    groups = bank.shape[0] // group_size
    per_block = max(1, bank_chunk // group_size)
    bank_sq = (bank * bank).sum(1)
    out = torch.empty(queries.shape[0], groups, dtype=queries.dtype, device=queries.device)
    rows_of = torch.empty(queries.shape[0], groups, dtype=torch.long, device=queries.device) if return_index else None
    for q0 in range(0, queries.shape[0], query_chunk):
        q = queries[q0:q0 + query_chunk]
        q_sq = (q * q).sum(1, keepdim=True)
        for g0 in range(0, groups, per_block):
            rows = slice(g0 * group_size, min(groups, g0 + per_block) * group_size)
            dots = q @ bank[rows].T
            dist = q_sq + bank_sq[rows] - 2 * dots if metric == "l2" else 1 - dots
            best = dist.view(len(q), -1, group_size).min(dim=2)
            out[q0:q0 + len(q), g0:g0 + per_block] = best.values
            if return_index:
                first_row = torch.arange(g0, g0 + best.indices.shape[1], device=queries.device) * group_size
                rows_of[q0:q0 + len(q), g0:g0 + per_block] = best.indices + first_row
    out = out.clamp_min(0).sqrt() if metric == "l2" else out
    return (out, rows_of) if return_index else out


def nearest_in_first(distances: torch.Tensor, rows: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest neighbour among the first ``groups`` groups, from :func:`nearest_per_group` output.

    Shapes: ``(N, G), (N, G) -> distances (N,), bank rows (N,)``; ``1 <= groups <= G``.
    """
    if not 1 <= groups <= distances.shape[1]:
        raise ValueError(f"groups must be in 1..{distances.shape[1]}, got {groups}")
    best = distances[:, :groups].min(dim=1)
    return best.values, rows.gather(1, best.indices[:, None])[:, 0]
