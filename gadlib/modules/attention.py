"""NAGL's proxy attention: learnable proxies read a token set through masked cross-attention.

Both NAGL stages have this structure (separate weights): cross-attention from a small set of proxy
vectors to a set of tokens, then self-attention among the proxies; post-norm, no feed-forward.

* Residual Mining: proxies = learnable parameters; keys = abnormal-reference features + position code;
  values = abnormal residuals; only patches inside each abnormal reference's mask may be attended.
* Anomaly Feature Learning: proxies = the mined proxies; keys = query residuals + position code;
  values = query features.

Masks are per sample (``key_padding_mask`` of ``nn.MultiheadAttention``), so a batch of several
episodes with different masks or different numbers of abnormal references gives exactly what one
episode at a time gives -- the public code gets this wrong for batch > 1.
"""
from __future__ import annotations

import torch
from torch import nn


class ProxyAttention(nn.Module):
    """Cross-attention (proxies -> tokens) then self-attention over proxies, each with residual + LayerNorm.

    Args:
        dim: feature dimension (NAGL: 384).
        heads: attention heads (NAGL: 4).
    """

    def __init__(self, dim: int, heads: int = 4, faithful_mask_order: bool = False):
        super().__init__()
        self.heads = heads
        # The public code repeats the (B, P, N) mask head-major, but torch reads (B * heads) batch-major:
        # with batch > 1 each sample then attends through another sample's mask. Named switch, off by default.
        self.faithful_mask_order = faithful_mask_order
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.cross = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.cross_norm = nn.LayerNorm(dim)
        self.self_attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.self_norm = nn.LayerNorm(dim)

    def forward(self, proxies: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                allowed: torch.Tensor | None = None) -> torch.Tensor:
        """Update ``proxies`` from the tokens.

        Args:
            proxies: ``(B, P, D)``.
            keys, values: ``(B, N, D)`` tokens.
            allowed: ``(B, N)`` bool, True where a token may be attended (inside a mask, not padding);
                ``None`` allows all. A sample with no allowed token gets no cross-attention update.
        Returns:
            ``(B, P, D)``.
        """
        if keys.shape != values.shape or keys.shape[0] != proxies.shape[0] or keys.shape[-1] != proxies.shape[-1]:
            raise ValueError(f"expected proxies (B, P, D) and keys = values (B, N, D); got {tuple(proxies.shape)}, "
                             f"{tuple(keys.shape)}, {tuple(values.shape)}")
        if allowed is None:
            update = self.cross(proxies, keys, values, need_weights=False)[0]
        else:
            if allowed.shape != keys.shape[:2]:
                raise ValueError(f"allowed must be (B, N) = {tuple(keys.shape[:2])}, got {tuple(allowed.shape)}")
            empty = ~allowed.any(dim=1)
            # A fully masked row would give NaN; let it attend anywhere, then drop its update.
            padding = ~(allowed | empty[:, None])
            if self.faithful_mask_order:
                blocked = padding[:, None, :].expand(-1, proxies.shape[1], -1).repeat(self.heads, 1, 1)
                update = self.cross(proxies, keys, values, attn_mask=blocked, need_weights=False)[0]
            else:
                update = self.cross(proxies, keys, values, key_padding_mask=padding, need_weights=False)[0]
            update = update.masked_fill(empty[:, None, None], 0.0)
        proxies = self.cross_norm(proxies + update)
        return self.self_norm(proxies + self.self_attention(proxies, proxies, proxies, need_weights=False)[0])


def stack_references(features: list[torch.Tensor], masks: list[torch.Tensor],
                     position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens of a variable number of references per sample, padded into one batch.

    Args:
        features: per sample, ``(m_i, N, D)`` tokens of its m_i references (m_i may be 0).
        masks: per sample, ``(m_i, N)`` bool, True inside the reference's anomaly mask.
        position: ``(N, D)`` position code, added to *every* reference's tokens at the same grid cell
            (so that with m > 1 each reference keeps its own positions); or ``(M, N, D)``, one code per
            reference slot (how NAGL's ``faithful_positions`` switch misaligns them).
    Returns:
        ``tokens (B, M * N, D)`` with ``M = max m_i`` (zero padded) and ``allowed (B, M * N)``.
    """
    if len(features) != len(masks) or not features:
        raise ValueError(f"need one mask tensor per sample and at least one sample; got {len(features)} and {len(masks)}")
    n, d = position.shape[-2:]
    most = max(f.shape[0] for f in features)
    if position.ndim == 3 and position.shape[0] < most:
        raise ValueError(f"position has codes for {position.shape[0]} references, but a sample has {most}")
    tokens = position.new_zeros(len(features), max(most, 1) * n, d)
    allowed = torch.zeros(len(features), max(most, 1) * n, dtype=torch.bool, device=position.device)
    for i, (refs, inside) in enumerate(zip(features, masks)):
        if refs.shape[1:] != (n, d) or inside.shape != refs.shape[:2]:
            raise ValueError(f"sample {i}: expected features (m, {n}, {d}) and masks (m, {n}); got "
                             f"{tuple(refs.shape)} and {tuple(inside.shape)}")
        m = refs.shape[0]
        code = position if position.ndim == 2 else position[:m]
        tokens[i, :m * n] = (refs + code).reshape(m * n, d)
        allowed[i, :m * n] = inside.reshape(m * n)
    return tokens, allowed
