"""Cosine-similarity maps of the normal-and-abnormal guided methods (NAGL) and InCTRL's patch residual.

All maps are per patch, in [0, 1], higher = more anomalous unless said otherwise; shapes in docstrings.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from gadlib.kernels.residual import nearest_neighbour


def nearest_normal_similarity(queries: torch.Tensor, normal_bank: torch.Tensor) -> torch.Tensor:
    """NAGL's normal map ``s_n``: ``(1 + cos) / 2`` to the nearest normal-reference patch.

    ``(N, D), (M, D) -> (N,)``; 1 for a patch identical (in direction) to some reference patch.
    """
    distance, _ = nearest_neighbour(queries, normal_bank, "cosine")      # 1 - cos of the nearest
    return 1 - distance / 2


def inctrl_patch_residual(queries: list[torch.Tensor], banks: list[torch.Tensor]) -> torch.Tensor:
    """InCTRL's patch residual map: per layer ``(1 - cos) / 2`` to the nearest reference token, mean over layers.

    ``[(N, D_l)], [(M_l, D_l)] -> (N,)``; 0 where every layer finds an identical reference token.
    """
    if len(queries) != len(banks) or not queries:
        raise ValueError(f"need one bank per layer and at least one layer; got {len(queries)} and {len(banks)}")
    per_layer = [nearest_neighbour(q, b, "cosine")[0] / 2 for q, b in zip(queries, banks)]
    return torch.stack(per_layer).mean(0)


def proxy_similarity(queries: torch.Tensor, proxies: torch.Tensor) -> torch.Tensor:
    """NAGL's abnormal map ``s_a``: mean over proxies of ``(1 + cos(query patch, proxy)) / 2``.

    ``(B, N, D), (B, P, D) -> (B, N)``.
    """
    cos = F.normalize(queries, dim=-1) @ F.normalize(proxies, dim=-1).transpose(1, 2)   # (B, N, P)
    return ((1 + cos) / 2).mean(-1)


def normal_abnormal_map(abnormal_similarity: torch.Tensor, normal_similarity: torch.Tensor) -> torch.Tensor:
    """NAGL's anomaly map ``(s_a + 1 - s_n) / 2``: like the abnormal references, unlike the normal ones."""
    if abnormal_similarity.shape != normal_similarity.shape:
        raise ValueError(f"maps differ in shape: {tuple(abnormal_similarity.shape)} and {tuple(normal_similarity.shape)}")
    return (abnormal_similarity + 1 - normal_similarity) / 2
