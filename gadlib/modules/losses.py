"""Segmentation and classification losses of the trained methods, on *probabilities* (never logits twice)."""
from __future__ import annotations

import torch


def focal_loss(probability: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, eps: float = 1e-6) -> torch.Tensor:
    """Binary focal loss ``-(1 - p_t)^gamma log p_t``, mean over elements (Lin et al., 2017).

    ``probability`` and ``target`` have the same shape; ``probability`` is already in [0, 1] -- InCTRL's
    public code applies a second sigmoid here, which our default does not.
    """
    if probability.shape != target.shape:
        raise ValueError(f"probability {tuple(probability.shape)} and target {tuple(target.shape)} differ in shape")
    if probability.numel() == 0:
        return probability.sum()
    p_t = torch.where(target > 0.5, probability, 1 - probability).clamp(eps, 1.0)
    return (-(1 - p_t) ** gamma * torch.log(p_t)).mean()


def dice_loss(probability: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice loss ``1 - (2 |P T| + s) / (|P| + |T| + s)`` over all elements of the batch.

    Pooled over the batch rather than per sample: a normal query (empty target) then adds only its
    false positives, instead of a per-sample term that is ~1 whatever the map does.
    """
    if probability.shape != target.shape:
        raise ValueError(f"probability {tuple(probability.shape)} and target {tuple(target.shape)} differ in shape")
    return 1 - (2 * (probability * target).sum() + smooth) / (probability.sum() + target.sum() + smooth)
