"""ResAD's feature constraintor: one Conv3x3 + BatchNorm + ReLU per level, and its two losses."""
from __future__ import annotations

import torch
from torch import nn

CONSTRAINT_LOSSES = ("occ", "shell")


class FeatureConstraintor(nn.Module):
    """``(B, C, H, W) -> (B, C, H, W)``: shapes residual features so normal ones gather near the origin."""

    def __init__(self, channels: int):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(channels), nn.ReLU())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.block(features)


def occ_loss(output: torch.Tensor, features: torch.Tensor, abnormal: torch.Tensor) -> torch.Tensor:
    """The paper's abnormal-invariant one-class loss, per position.

    Normal positions are pulled to the origin by the pseudo-Huber ``sqrt(|x'|^2 + 1) - 1``; abnormal
    positions are kept where they were, ``|x' - x|`` (so anomalies are not squeezed in with normals).
    Shapes: ``output, features (N, C)``, ``abnormal (N,) bool -> ()``.
    """
    loss = output.new_zeros(())
    if (~abnormal).any():
        loss = loss + (torch.sqrt((output[~abnormal] ** 2).sum(1) + 1) - 1).mean()
    if abnormal.any():
        loss = loss + (output[abnormal] - features[abnormal]).norm(dim=1).mean()
    return loss


def shell_loss(output: torch.Tensor, features: torch.Tensor, abnormal: torch.Tensor,
               radius: float = 0.4, eps: float = 1e-6) -> torch.Tensor:
    """Our reading of the public code's "shell" loss (a named switch, not the paper's loss).

    A log barrier keeps normal features inside a ball of ``radius`` (``-log(1 - |x'| / 2r)`` grows
    without bound at ``2r``, hinge above ``r``), abnormal features are pushed outside it
    (``-log(|x'| / r)`` while inside), and abnormal outputs stay close to their inputs (MSE +
    ``1 - cos``). Shapes as :func:`occ_loss`.
    """
    norms = output.norm(dim=1)
    loss = output.new_zeros(())
    normal = ~abnormal
    if normal.any():
        inside = (norms[normal] / (2 * radius)).clamp(max=1 - eps)
        loss = loss + (-torch.log1p(-inside) * (norms[normal] > radius)).mean()
    if abnormal.any():
        outside = (norms[abnormal] / radius).clamp(min=eps)
        loss = loss + (-torch.log(outside)).clamp(min=0).mean()
        loss = loss + ((output[abnormal] - features[abnormal]) ** 2).mean()
        loss = loss + (1 - torch.cosine_similarity(output[abnormal], features[abnormal], dim=1)).mean()
    return loss
