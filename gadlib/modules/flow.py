"""Conditional normalizing flow over feature vectors (FrEIA ``AllInOneBlock``s), and its losses.

One flow models the density of ``C``-dim feature vectors, each conditioned on a code (a position
code here). ``log_likelihood`` returns ``log p(x | c) / C`` -- per dimension, so that levels with
different channel counts are on one scale (ResAD, following CFlow/BGAD).
"""
from __future__ import annotations

import math

import torch
from torch import nn


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
