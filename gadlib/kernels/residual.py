"""Nearest-neighbour matching against a bank of reference features, and residual features.

All functions are pure and device-agnostic. The exact search is the matrix-multiply form
``|q|^2 + |b|^2 - 2 q.b`` with ``|b|^2 - 2 q.b`` fused into one ``addmm`` per block and ``|q|^2`` added after
the minimum (it does not change which row is nearest), over blocks of about ``BLOCK_ELEMENTS`` distances
that stay in the CPU cache; memory is bounded for any number of references (k).

``search`` chooses how (``SEARCHES``):

* ``"exact"`` -- float32 (or the inputs' float64) matrix products; the default and the reference.
* ``"float16"`` -- the bank and queries rounded to float16 first (what a half-precision bank keeps),
  products in float32: the accuracy cost of float16 banks, measured by ``gad bench --search``.
* ``"faiss"`` -- an exact faiss flat index (``pip install 'gadlib[faiss]'``); same answers up to ties.
* ``"faiss-ivf"`` -- an approximate faiss inverted-file index (``sqrt(rows)`` lists, an eighth of them
  probed): for large reference banks, where it trades some accuracy for time.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

METRICS = ("l2", "cosine")
RESIDUAL_MODES = ("difference", "squared")
SEARCHES = ("exact", "float16", "faiss", "faiss-ivf")
# Distances per block on the CPU: 1 MB of float32, a core's L2 (on 2 EPYC cores, 4 MB blocks over
# 16384-row bank blocks made kNN's k=32 matching ~2x, k=8 ~1.3x and ResAD's 28x28 one ~1.3x slower).
BLOCK_ELEMENTS = 1 << 18
BANK_BLOCK = 2048                 # bank rows per block: whole groups up to this, else slices of one group
# On a GPU, larger blocks: fewer kernel launches, memory still bounded.
DEVICE_BLOCK_ELEMENTS = 1 << 20
DEVICE_BANK_BLOCK = 16384
IVF_PROBE_SHARE = 8               # faiss-ivf probes 1/8 of its lists


def check_search(search: str) -> None:
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {SEARCHES}, got '{search}'")


def _check(queries: torch.Tensor, bank: torch.Tensor, metric: str, search: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got '{metric}'")
    check_search(search)
    if queries.ndim != 2 or bank.ndim != 2 or queries.shape[1] != bank.shape[1]:
        raise ValueError(f"expected queries (N, D) and bank (M, D), got {tuple(queries.shape)} and {tuple(bank.shape)}")


def nearest_neighbour(queries: torch.Tensor, bank: torch.Tensor, metric: str = "l2",
                      query_chunk: int | None = None, bank_chunk: int | None = None,
                      search: str = "exact") -> tuple[torch.Tensor, torch.Tensor]:
    """Distance from each query row to its nearest bank row.

    Args:
        queries: ``(N, D)``.
        bank: ``(M, D)`` reference features (all positions of all references).
        metric: ``"l2"`` (Euclidean distance) or ``"cosine"`` (``1 - cos``, in [0, 2]).
        query_chunk, bank_chunk: block sizes (rows); ``None`` = cache-sized blocks. They bound memory
            and change nothing else.
        search: how to search (module docstring).
    Returns:
        ``distances (N,)`` and ``indices (N,)`` into ``bank``.
    """
    _check(queries, bank, metric, search)
    if bank.shape[0] == 0:
        raise ValueError("the reference bank is empty")
    distances, rows = _search(queries, bank, bank.shape[0], metric, query_chunk, bank_chunk, search)
    return distances[:, 0], rows[:, 0]


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
                      query_chunk: int | None = None, bank_chunk: int | None = None,
                      return_index: bool = False, search: str = "exact"
                      ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Distance from each query row to its nearest row *within each group* of the bank.

    The bank is ``G`` consecutive groups of ``group_size`` rows (e.g. all patches of one reference
    image). A running minimum over groups (``torch.cummin`` along dim 1) then gives the nearest-
    neighbour distance for the first 1, 2, ..., G references in one pass, which is how nested k-shot
    references are scored without matching the same patches again.

    Shapes: ``(N, D), (G * group_size, D) -> (N, G)``; same metrics, blocks and searches as
    :func:`nearest_neighbour`. With ``return_index=True`` also the ``(N, G)`` bank rows of those nearest
    neighbours (see :func:`nearest_in_first`).
    """
    _check(queries, bank, metric, search)
    if group_size < 1 or bank.shape[0] == 0 or bank.shape[0] % group_size:
        raise ValueError(f"bank rows ({bank.shape[0]}) must be a positive multiple of group_size ({group_size})")
    distances, rows = _search(queries, bank, group_size, metric, query_chunk, bank_chunk, search, return_index)
    return (distances, rows) if return_index else distances


def nearest_in_shots(queries: torch.Tensor, bank: torch.Tensor, group_size: int, shots: Sequence[int],
                     metric: str = "l2", query_chunk: int | None = None, bank_chunk: int | None = None,
                     search: str = "exact") -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Nearest bank row among the first ``k`` groups, for every ``k`` in ``shots``, in one matching pass.

    The same answers as ``nearest_in_first(*nearest_per_group(..., return_index=True), k)``, found with
    less work: the ``(N, G)`` per-group minima come from the distance-only search, which gives each
    query row's winning group for each ``k``; the nearest row itself is then searched only inside that
    group. That costs about one group's worth of products per distinct winner of a row, instead of
    tracking rows in every group. Ties go to the first group and the first row, as there. The faiss
    searches find rows at no extra cost and take the direct path.

    Shapes: ``(N, D), (G * group_size, D) -> {k: (distances (N,), bank rows (N,))}``; ``1 <= k <= G``.
    Metrics, blocks and searches as :func:`nearest_per_group`.
    """
    _check(queries, bank, metric, search)
    if group_size < 1 or bank.shape[0] == 0 or bank.shape[0] % group_size:
        raise ValueError(f"bank rows ({bank.shape[0]}) must be a positive multiple of group_size ({group_size})")
    groups, shots = bank.shape[0] // group_size, sorted(set(int(k) for k in shots))
    if not shots or not 1 <= shots[0] <= shots[-1] <= groups:
        raise ValueError(f"shots must be in 1..{groups}, got {shots}")
    if search.startswith("faiss"):
        found = _search(queries, bank, group_size, metric, query_chunk, bank_chunk, search)
        return {k: nearest_in_first(*found, k) for k in shots}
    queries, bank = _prepared(queries, bank, metric, search)
    distances = _exact_search(queries, bank, group_size, metric, query_chunk, bank_chunk, with_rows=False)[0]
    # min (not argmin) over groups: the tie rule of nearest_in_first, so both pick the same group
    best = {k: distances[:, :k].min(dim=1) for k in shots}
    winners = torch.stack([best[k].indices for k in shots])                   # (S, N)
    rows = torch.empty_like(winners)
    for group in torch.unique(winners).tolist():
        wins = winners == group
        needed = wins.any(0).nonzero()[:, 0]
        first = group * group_size
        found = _exact_search(queries[needed], bank[first:first + group_size], group_size, metric,
                              query_chunk, bank_chunk)[1][:, 0] + first
        # rows[s, needed] = found where this group won for shot s, else keep what another group wrote
        rows[:, needed] = torch.where(wins[:, needed], found, rows[:, needed])
    return {k: (best[k].values, rows[s]) for s, k in enumerate(shots)}


def _prepared(queries, bank, metric, search):
    """The features the search compares: float16-rounded for that search, unit rows for cosine."""
    if search == "float16":        # the features a float16 bank holds; products stay float32
        queries, bank = queries.half().float(), bank.half().float()
    if metric == "cosine":
        queries = torch.nn.functional.normalize(queries, dim=1)
        bank = torch.nn.functional.normalize(bank, dim=1)
    return queries, bank


def _search(queries, bank, group_size, metric, query_chunk, bank_chunk, search, with_rows=True):
    queries, bank = _prepared(queries, bank, metric, search)
    if search.startswith("faiss"):
        return _faiss_search(queries, bank, group_size, metric, search == "faiss-ivf")
    return _exact_search(queries, bank, group_size, metric, query_chunk, bank_chunk, with_rows)


def _bank_blocks(rows: int, group_size: int, bank_chunk: int) -> list[tuple[int, int, int]]:
    """``(first row, last row, width)``: whole groups per block, or slices of one large group."""
    if group_size <= bank_chunk:
        per = bank_chunk // group_size
        return [(g * group_size, min(rows, (g + per) * group_size), group_size)
                for g in range(0, rows // group_size, per)]
    return [(g0 + s, g0 + min(group_size, s + bank_chunk), min(group_size, s + bank_chunk) - s)
            for g0 in range(0, rows, group_size) for s in range(0, group_size, bank_chunk)]


def _exact_search(queries, bank, group_size, metric, query_chunk, bank_chunk, with_rows=True):
    """Blocked ``(N, G)`` minima over each group; see the module docstring for the fused form.

    Without ``with_rows`` only the distances are found (``amin``, ~9x faster on CPU than ``min`` with
    its indices) and the rows come back as ``None``.
    """
    n, groups = queries.shape[0], bank.shape[0] // group_size
    best = torch.full((n, groups), float("inf"), dtype=queries.dtype, device=queries.device)
    best_rows = torch.zeros(n, groups, dtype=torch.long, device=queries.device) if with_rows else None
    bank_sq = (bank * bank).sum(1)
    cpu = queries.device.type == "cpu"
    elements = BLOCK_ELEMENTS if cpu else DEVICE_BLOCK_ELEMENTS
    for first, last, width in _bank_blocks(bank.shape[0], group_size,
                                           bank_chunk or (BANK_BLOCK if cpu else DEVICE_BANK_BLOCK)):
        block_t = bank[first:last].T
        group0, in_block = first // group_size, (last - first) // width
        offsets = first + torch.arange(in_block, device=queries.device) * width
        step = query_chunk or max(16, elements // (last - first))
        for q0 in range(0, n, step):
            q = queries[q0:q0 + step]
            if metric == "l2":        # |b|^2 - 2 q.b; |q|^2 is added after the minimum
                score = torch.addmm(bank_sq[first:last], q, block_t, alpha=-2)
            else:                     # -cos; 1 is added after the minimum
                score = torch.mm(q, block_t).neg_()
            old = best[q0:q0 + len(q), group0:group0 + in_block]
            if not with_rows:
                torch.minimum(old, score.view(len(q), in_block, width).amin(dim=2), out=old)
                continue
            value, index = score.view(len(q), in_block, width).min(dim=2)
            better = value < old
            old.copy_(torch.where(better, value, old))
            old_rows = best_rows[q0:q0 + len(q), group0:group0 + in_block]
            old_rows.copy_(torch.where(better, index + offsets, old_rows))
    if metric == "l2":
        best = (best + (queries * queries).sum(1, keepdim=True)).clamp_min(0).sqrt()
    else:
        best = best + 1
    return best, best_rows


def _faiss_search(queries, bank, group_size, metric, approximate):
    """The same ``(N, G)`` minima from one faiss index per group (flat, or inverted-file when approximate)."""
    try:
        import faiss
    except ImportError as error:
        raise ImportError("search='faiss' needs the faiss package: pip install 'gadlib[faiss]' "
                          "(or faiss-cpu / faiss-gpu); search='exact' needs nothing") from error
    import numpy as np

    faiss.omp_set_num_threads(torch.get_num_threads())
    q = np.ascontiguousarray(queries.detach().float().cpu().numpy())
    b = np.ascontiguousarray(bank.detach().float().cpu().numpy())
    dim, groups = b.shape[1], b.shape[0] // group_size
    flat = faiss.IndexFlatL2 if metric == "l2" else faiss.IndexFlatIP
    distances = np.empty((len(q), groups), dtype=np.float32)
    rows = np.empty((len(q), groups), dtype=np.int64)
    for g in range(groups):
        members = b[g * group_size:(g + 1) * group_size]
        lists = min(int(math.sqrt(group_size)), group_size // 39) if approximate else 0
        if lists >= 2:          # faiss wants about 39 training rows per list
            kind = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
            index = faiss.IndexIVFFlat(flat(dim), dim, lists, kind)
            index.train(members)
            index.nprobe = max(1, math.ceil(lists / IVF_PROBE_SHARE))
        else:
            index = flat(dim)
        index.add(members)
        found, where = index.search(q, 1)
        missed = where[:, 0] < 0            # an inverted-file search can probe only empty lists
        if missed.any():
            exact = flat(dim)
            exact.add(members)
            found[missed], where[missed] = exact.search(q[missed], 1)
        distances[:, g], rows[:, g] = found[:, 0], where[:, 0] + g * group_size
    distances = torch.from_numpy(distances).to(queries.device, queries.dtype)
    if metric == "l2":
        distances = distances.clamp_min(0).sqrt()
    else:
        distances = 1 - distances
    return distances, torch.from_numpy(rows).to(queries.device)


def nearest_in_first(distances: torch.Tensor, rows: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest neighbour among the first ``groups`` groups, from :func:`nearest_per_group` output.

    Shapes: ``(N, G), (N, G) -> distances (N,), bank rows (N,)``; ``1 <= groups <= G``.
    """
    if not 1 <= groups <= distances.shape[1]:
        raise ValueError(f"groups must be in 1..{distances.shape[1]}, got {groups}")
    best = distances[:, :groups].min(dim=1)
    return best.values, rows.gather(1, best.indices[:, None])[:, 0]
