"""2-D sinusoidal position codes (the conditioning of CFlow-style per-position normalizing flows)."""
from __future__ import annotations

import math

import torch


def sinusoidal_position_2d(dim: int, height: int, width: int) -> torch.Tensor:
    """Position code of every cell of a ``height x width`` grid, ``(dim, height, width)``.

    The first half of the channels encodes the column, the second half the row, each as interleaved
    ``sin(p * f_i)`` / ``cos(p * f_i)`` with frequencies ``f_i = 10000 ** (-i / (dim / 2))`` (the
    Transformer's code per axis). ``dim`` must be a positive multiple of 4. Values lie in [-1, 1] and
    every cell's code is distinct.
    """
    if dim < 4 or dim % 4:
        raise ValueError(f"position code dim must be a positive multiple of 4, got {dim}")
    if height < 1 or width < 1:
        raise ValueError(f"grid must be at least 1x1, got {height}x{width}")
    half = dim // 2
    frequencies = torch.exp(torch.arange(0, half, 2, dtype=torch.float32) * (-math.log(10000.0) / half))
    code = torch.zeros(dim, height, width)
    columns = torch.arange(width, dtype=torch.float32)[:, None] * frequencies      # (W, half/2)
    rows = torch.arange(height, dtype=torch.float32)[:, None] * frequencies        # (H, half/2)
    code[0:half:2] = torch.sin(columns).T[:, None, :].expand(-1, height, -1)
    code[1:half:2] = torch.cos(columns).T[:, None, :].expand(-1, height, -1)
    code[half::2] = torch.sin(rows).T[:, :, None].expand(-1, -1, width)
    code[half + 1::2] = torch.cos(rows).T[:, :, None].expand(-1, -1, width)
    return code
