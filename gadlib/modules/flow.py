"""Conditional normalizing flow over feature vectors (FrEIA ``AllInOneBlock``s), and its losses.

One flow models the density of ``C``-dim feature vectors, each conditioned on a code (a position
code here). ``log_likelihood`` returns ``log p(x | c) / C`` -- per dimension, so that levels with
different channel counts are on one scale (ResAD, following CFlow/BGAD).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

GRID_CHUNK_ROWS = 2048     # rows per pass of log_likelihood_grid: its activations stay cache-sized


def _subnet(dims_in: int, dims_out: int) -> nn.Module:
    # ResAD's coupling subnet: Linear(d, 2d) - ReLU - Linear(2d, out).
    return nn.Sequential(nn.Linear(dims_in, 2 * dims_in), nn.ReLU(), nn.Linear(2 * dims_in, dims_out))


class ConditionalFlow(nn.Module):
    """``blocks`` AllInOneBlocks (affine coupling, soft permutation, softplus global affine).

    Args:
        channels: feature dimension ``C``.
        cond_dim: condition dimension (0 for an unconditional flow).
        blocks: number of coupling blocks (paper 8, public code 10).
        clamp: affine clamping of the coupling scales (ResAD: 1.9).
    """

    def __init__(self, channels: int, cond_dim: int, blocks: int = 8, clamp: float = 1.9):
        super().__init__()
        import FrEIA.framework as Ff
        import FrEIA.modules as Fm

        if channels < 2:
            raise ValueError(f"a coupling flow needs at least 2 channels, got {channels}")
        self.channels = channels
        self.cond_dim = cond_dim
        self.inn = Ff.SequenceINN(channels)
        for _ in range(blocks):
            extra = dict(cond=0, cond_shape=(cond_dim,)) if cond_dim else {}
            self.inn.append(Fm.AllInOneBlock, subnet_constructor=_subnet, affine_clamping=clamp,
                            global_affine_type="SOFTPLUS", permute_soft=True, **extra)

    def log_likelihood(self, features: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """``log p(x | c) / C`` of ``(N, C)`` features under a standard-normal base, ``(N,)``."""
        if features.ndim != 2 or features.shape[1] != self.channels:
            raise ValueError(f"expected features (N, {self.channels}), got {tuple(features.shape)}")
        conditions = [cond] if self.cond_dim else []
        z, log_jac = self.inn(features, c=conditions)
        log_base = -0.5 * (z * z).sum(1) - 0.5 * self.channels * math.log(2 * math.pi)
        return (log_base + log_jac) / self.channels

    def log_likelihood_at(self, features: torch.Tensor, position_codes: torch.Tensor,
                          positions: torch.Tensor) -> torch.Tensor:
        """:meth:`log_likelihood` of ``(N, C)`` features whose codes are rows of a small table, with gradients.

        Row ``i`` is conditioned on ``position_codes[positions[i]]`` (``position_codes (P, cond)``,
        ``positions (N,)`` long). Equal to ``log_likelihood(features, position_codes[positions])`` up to
        float rounding, and cheaper for training: each block's first layer sees the code through
        ``W1[:, d1:] c + b1``, computed once per table row and gathered per feature row, so the layer
        multiplies ``d1`` inputs instead of ``d1 + cond`` (about a third of a ResAD flow's products).
        """
        if not self.cond_dim:
            return self.log_likelihood(features)
        if features.ndim != 2 or features.shape[1] != self.channels:
            raise ValueError(f"expected features (N, {self.channels}), got {tuple(features.shape)}")
        if position_codes.ndim != 2 or position_codes.shape[1] != self.cond_dim or positions.ndim != 1 \
                or positions.shape[0] != features.shape[0]:
            raise ValueError(f"expected position codes (P, {self.cond_dim}) and one position per feature row, got "
                             f"{tuple(position_codes.shape)} and {tuple(positions.shape)}")
        x, log_jac = features, features.new_zeros(features.shape[0])
        for block in self.inn.module_list:
            _check_plain(block, "log_likelihood_at")
            passive_dims, active_dims = block.splits
            first, last = block.subnet[0], block.subnet[2]
            per_position = torch.nn.functional.linear(position_codes, first.weight[:, passive_dims:], first.bias)
            passive, active = x[:, :passive_dims], x[:, passive_dims:]
            hidden = torch.relu(torch.nn.functional.linear(passive, first.weight[:, :passive_dims])
                                + per_position[positions])
            a = torch.nn.functional.linear(hidden, last.weight, last.bias) * 0.1
            sub_jac = block.clamp * torch.tanh(a[:, :active_dims])
            coupled = torch.cat([passive, active * torch.exp(sub_jac) + a[:, active_dims:]], 1)
            scale = block.global_scale_activation(block.global_scale)
            x = torch.nn.functional.linear(coupled * scale + block.global_offset,
                                           block.w_perm.reshape(self.channels, self.channels))
            log_jac = log_jac + sub_jac.sum(1) + torch.log(scale).sum()
        log_base = -0.5 * (x * x).sum(1) - 0.5 * self.channels * math.log(2 * math.pi)
        return (log_base + log_jac) / self.channels

    @torch.no_grad()
    def log_likelihood_grid(self, features: torch.Tensor, position_codes: torch.Tensor | None = None,
                            chunk_rows: int = GRID_CHUNK_ROWS) -> torch.Tensor:
        """:meth:`log_likelihood` of features laid on a grid of ``P`` positions, for inference.

        ``features`` are ``(B * P, C)`` rows, row ``b * P + p`` at position ``p`` (the order of
        :func:`~gadlib.kernels.patches.to_patches`), or ``(B, P, C)``; ``position_codes`` are ``(P, cond)``
        (``None`` for an unconditional flow). Returns ``(B * P,)``, equal to
        ``log_likelihood(features, position_codes.repeat(B, 1))`` up to float rounding, and faster
        (:class:`GridBlock`); whole images of about ``chunk_rows`` rows go through all blocks at a time, so
        that the activations stay in the CPU cache. No gradients: training keeps the FrEIA path.
        """
        rows = features.reshape(-1, features.shape[-1])
        if rows.shape[1] != self.channels:
            raise ValueError(f"expected features (..., {self.channels}), got {tuple(features.shape)}")
        if self.cond_dim and (position_codes is None or position_codes.ndim != 2
                              or position_codes.shape[1] != self.cond_dim or rows.shape[0] % position_codes.shape[0]):
            got = None if position_codes is None else tuple(position_codes.shape)
            raise ValueError(f"expected position codes (P, {self.cond_dim}) with P dividing {rows.shape[0]} rows, "
                             f"got {got}")
        codes = position_codes if self.cond_dim else None
        positions = 1 if codes is None else codes.shape[0]
        step = max(1, min(rows.shape[0], positions * max(1, chunk_rows // positions)))   # whole images
        blocks = [GridBlock.of(block, codes, step // positions) for block in self.inn.module_list]
        out = rows.new_empty(rows.shape[0])
        for first in range(0, rows.shape[0], step):
            x = rows[first:first + step].clone()       # the blocks update their active half in place
            log_jac = x.new_zeros(x.shape[0])
            for block in blocks:
                x, block_jac = block.forward(x)
                log_jac += block_jac
            log_base = -0.5 * (x * x).sum(1) - 0.5 * self.channels * math.log(2 * math.pi)
            out[first:first + step] = (log_base + log_jac) / self.channels
        return out


def _check_plain(block: nn.Module, what: str) -> None:
    """The rearranged paths cover AllInOneBlocks as ConditionalFlow builds them, nothing else."""
    if block.GIN or block.householder or block.reverse_pre_permute or block.input_rank != 0:
        raise ValueError(f"{what} covers AllInOneBlocks on (N, C) features without GIN, householder or "
                         "reverse permutations (as ConditionalFlow builds them)")


class GridBlock(NamedTuple):
    """One FrEIA 0.2 ``AllInOneBlock`` (as :class:`ConditionalFlow` builds it) rearranged for inference.

    FrEIA's forward: split ``x = [x1, x2]`` (``C - C // 2``, ``C // 2`` channels);
    ``a = 0.1 * subnet([x1, c])`` with ``subnet = Linear - ReLU - Linear``;
    ``x2 <- x2 * exp(clamp * tanh(a_s)) + a_t``; ``y = W (g * x + o)`` with the soft permutation ``W``,
    global scale ``g = 0.1 * softplus_{beta=0.5}(s)`` and offset ``o``; log-Jacobian
    ``sum(clamp * tanh(a_s)) + sum(log g)``. The same maths, cheaper:

    * the code ``c`` is the same for a position in every image and enters only the first layer, so
      its share of that layer (``W1[:, d1:] c + b1``) is computed once per position, then tiled over
      the images of a pass as the layer's bias (``first_bias``);
    * ``0.1`` is folded into the last layer, ``g`` and ``o`` into the permutation (``mixing``, ``mixing_bias``);
    * ``tanh(a) = 2 sigmoid(2a) - 1`` (a sigmoid is several times cheaper on CPU), its ``2`` folded too.

    Fields: ``passive_weight (H, d1)``, ``first_bias (images * P, H)`` (``P = 1`` for an unconditional
    block), ``last_weight (2 d2, H)``, ``last_bias (2 d2,)``, ``mixing (C, C)`` (applied
    as ``x @ mixing``), ``mixing_bias (C,)``, ``log_det`` (the constant ``sum(log g)``), ``clamp``.
    """

    passive_weight: torch.Tensor
    first_bias: torch.Tensor
    last_weight: torch.Tensor
    last_bias: torch.Tensor
    mixing: torch.Tensor
    mixing_bias: torch.Tensor
    log_det: torch.Tensor
    clamp: float

    @classmethod
    def of(cls, block: nn.Module, position_codes: torch.Tensor | None, images: int = 1) -> "GridBlock":
        """The block's rearranged weights for passes of up to ``images`` images of ``position_codes (P, cond)``
        (``None``: an unconditional block, one row per image)."""
        _check_plain(block, "GridBlock")
        first, last = block.subnet[0], block.subnet[2]
        passive_dims, active_dims = block.splits
        if position_codes is None:
            per_position = first.bias[None]
        else:
            per_position = torch.addmm(first.bias, position_codes, first.weight[:, passive_dims:].T)
        # rows of the last layer: 0.1 (FrEIA's damping) for the shifts, x2 more for the scales' sigmoid
        damping = torch.full((2 * active_dims, 1), 0.1, dtype=last.weight.dtype, device=last.weight.device)
        damping[:active_dims] = 0.2
        scale = block.global_scale_activation(block.global_scale).reshape(-1)
        permutation = block.w_perm.reshape(scale.shape[0], scale.shape[0])
        return cls(passive_weight=first.weight[:, :passive_dims].contiguous(),
                   first_bias=per_position.repeat(images, 1),
                   last_weight=(damping * last.weight).contiguous(), last_bias=damping[:, 0] * last.bias,
                   mixing=(permutation * scale).T.contiguous(),
                   mixing_bias=permutation @ block.global_offset.reshape(-1),
                   log_det=torch.log(scale).sum(), clamp=float(block.clamp))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B * P, C)`` rows of whole images -> ``(B * P, C)`` outputs and ``(B * P,)`` log-Jacobians.

        Overwrites the active half of ``x``.
        """
        passive_dims, active_dims = self.passive_weight.shape[1], self.last_weight.shape[0] // 2
        hidden = torch.addmm(self.first_bias[:x.shape[0]], x[:, :passive_dims], self.passive_weight.T)
        coefficients = torch.addmm(self.last_bias, hidden.relu_(), self.last_weight.T)
        log_scale = torch.sigmoid(coefficients[:, :active_dims]).mul_(2 * self.clamp).sub_(self.clamp)
        active = x[:, passive_dims:]
        active.mul_(torch.exp(log_scale)).add_(coefficients[:, active_dims:])
        return torch.addmm(self.mixing_bias, x, self.mixing), log_scale.sum(1) + self.log_det


def boundary_push_pull(log_p: torch.Tensor, abnormal: torch.Tensor, margin: float = 0.1,
                       percentile: float = 5.0) -> torch.Tensor:
    """BGAD's boundary-guided semi-push-pull term on per-dimension log-likelihoods.

    The normal boundary ``b`` is the ``percentile`` of the normal log-likelihoods (detached): normal
    features below it are pulled up to it, abnormal features above ``b - margin`` are pushed below.
    Shapes: ``(N,), (N,) bool -> ()``; zero when either class is absent from the batch.
    """
    normal_logp, abnormal_logp = log_p[~abnormal], log_p[abnormal]
    if normal_logp.numel() == 0:
        return log_p.new_zeros(())
    boundary = torch.quantile(normal_logp.detach().float(), percentile / 100.0)
    loss = torch.relu(boundary - normal_logp).mean()
    if abnormal_logp.numel():
        loss = loss + torch.relu(abnormal_logp - (boundary - margin)).mean()
    return loss
