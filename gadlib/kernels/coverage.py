"""From pixel masks to feature cells: the share of each cell's window that a defect mask covers.

The inverse of :func:`gadlib.kernels.scoring.upsample`: a cell ``i`` of a grid of ``h`` cells over ``S``
pixels is centred at ``offset + stride * i`` (``stride = S / h``; ``offset`` from
:meth:`gadlib.backbones.Backbone.level_offsets`, ``None`` = ``stride / 2``, cells tiling the image) and its
window spans ``stride`` pixels around that centre. Training labels (which cells are abnormal) and the
cells a method attends in an abnormal reference come from these shares, so they sit where the features
look, as the pixel maps do.
"""
from __future__ import annotations

import torch


def window_matrix(cells: int, size: int, offset: float | None = None) -> torch.Tensor:
    """``(cells, size)``: how much of pixel ``j`` (spanning ``[j, j + 1)``) lies in cell ``i``'s window, divided by
    the window's width inside the image, so a row applied to a 0/1 mask gives the covered share.

    Windows are ``stride`` wide around the cell centres, cut at the image's edges; the first starts at the
    top (left) edge at the latest and the last ends at the bottom (right) edge at the earliest, so every
    pixel belongs to some cell (a defect in a corner that no centre is near still labels a cell)."""
    stride = size / cells
    first = stride / 2 if offset is None else offset
    centres = first + stride * torch.arange(cells, dtype=torch.float64)
    low, high = (centres - stride / 2).clamp(0, size), (centres + stride / 2).clamp(0, size)
    low[0], high[-1] = 0.0, float(size)
    pixels = torch.arange(size, dtype=torch.float64)[None, :]
    overlap = (torch.minimum(high[:, None], pixels + 1) - torch.maximum(low[:, None], pixels)).clamp(min=0)
    return (overlap / (high - low).clamp(min=1e-9)[:, None]).float()


def cell_coverage(masks: torch.Tensor, side: tuple[int, int], offset: float | None = None) -> torch.Tensor:
    """``(N, S, S)`` masks (0/1 or shares) -> ``(N, h, w)`` covered share of each cell's window.

    With ``offset=None`` and ``S`` a multiple of the side this is ``adaptive_avg_pool2d`` (cells tile the
    image); with a CNN's offset the windows move with the receptive fields.
    """
    if masks.ndim != 3:
        raise ValueError(f"expected masks (N, S, S), got {tuple(masks.shape)}")
    rows = window_matrix(side[0], masks.shape[-2], offset).to(masks.device)
    columns = window_matrix(side[1], masks.shape[-1], offset).to(masks.device)
    return torch.einsum("hs,nst,wt->nhw", rows, masks.float(), columns)
