"""NAGL's proxy attention: per-sample masks, any number of abnormal references, no NaN for empty masks."""
from __future__ import annotations

import pytest
import torch

from gadlib.kernels.position import sinusoidal_position_2d
from gadlib.modules.attention import ProxyAttention, stack_references

D, N, P = 16, 9, 5


@pytest.fixture
def block():
    torch.manual_seed(0)
    return ProxyAttention(D, heads=4).eval()


def test_a_batch_of_two_with_different_masks_equals_two_batches_of_one(block):
    torch.manual_seed(1)
    proxies, keys, values = torch.randn(2, P, D), torch.randn(2, N, D), torch.randn(2, N, D)
    allowed = torch.zeros(2, N, dtype=torch.bool)
    allowed[0, :3] = True
    allowed[1, 5:] = True
    together = block(proxies, keys, values, allowed)
    for i in range(2):
        alone = block(proxies[i:i + 1], keys[i:i + 1], values[i:i + 1], allowed[i:i + 1])
        torch.testing.assert_close(together[i:i + 1], alone, rtol=1e-5, atol=1e-6)


def test_tokens_outside_the_mask_have_no_influence(block):
    torch.manual_seed(2)
    proxies, keys, values = torch.randn(1, P, D), torch.randn(1, N, D), torch.randn(1, N, D)
    allowed = torch.zeros(1, N, dtype=torch.bool)
    allowed[0, [1, 4]] = True
    changed_keys, changed_values = keys.clone(), values.clone()
    changed_keys[0, ~allowed[0]] = 100.0
    changed_values[0, ~allowed[0]] = -100.0
    torch.testing.assert_close(block(proxies, keys, values, allowed),
                               block(proxies, changed_keys, changed_values, allowed))
    assert not torch.allclose(block(proxies, keys, values, allowed), block(proxies, keys, values))


def test_a_sample_with_an_empty_mask_gets_no_cross_attention_update(block):
    torch.manual_seed(3)
    proxies, keys, values = torch.randn(2, P, D), torch.randn(2, N, D), torch.randn(2, N, D)
    allowed = torch.zeros(2, N, dtype=torch.bool)
    allowed[1, :4] = True
    out = block(proxies, keys, values, allowed)
    assert torch.isfinite(out).all()
    with torch.no_grad():
        only_self = block.cross_norm(proxies[:1])
        only_self = block.self_norm(only_self + block.self_attention(only_self, only_self, only_self)[0])
    torch.testing.assert_close(out[:1], only_self)


def test_two_abnormal_references_each_keep_their_positions_and_order_does_not_matter(block):
    torch.manual_seed(4)
    position = sinusoidal_position_2d(D, 3, 3).flatten(1).T          # (N, D)
    refs = torch.randn(2, N, D)
    inside = torch.rand(2, N) > 0.4
    tokens, allowed = stack_references([refs], [inside], position)
    assert tokens.shape == (1, 2 * N, D) and allowed.sum() == inside.sum()
    torch.testing.assert_close(tokens[0, N:], refs[1] + position)     # the second reference's own grid
    swapped, swapped_allowed = stack_references([refs.flip(0)], [inside.flip(0)], position)
    proxies = torch.randn(1, P, D)
    torch.testing.assert_close(block(proxies, tokens, tokens, allowed),
                               block(proxies, swapped, swapped, swapped_allowed), rtol=1e-5, atol=1e-6)


def test_padding_for_different_numbers_of_references(block):
    torch.manual_seed(5)
    position = torch.zeros(N, D)
    one, two = torch.randn(1, N, D), torch.randn(2, N, D)
    masks = [torch.ones(1, N, dtype=torch.bool), torch.ones(2, N, dtype=torch.bool)]
    tokens, allowed = stack_references([one, two], masks, position)
    assert tokens.shape == (2, 2 * N, D)
    assert allowed[0].sum() == N and allowed[1].sum() == 2 * N and not allowed[0, N:].any()
    proxies = torch.randn(2, P, D)
    batched = block(proxies, tokens, tokens, allowed)
    alone = block(proxies[:1], *(2 * [one.reshape(1, N, D)]), masks[0].reshape(1, N))
    torch.testing.assert_close(batched[:1], alone, rtol=1e-5, atol=1e-6)
    no_refs, none_allowed = stack_references([torch.zeros(0, N, D)], [torch.zeros(0, N, dtype=torch.bool)], position)
    assert no_refs.shape == (1, N, D) and not none_allowed.any()


def test_shape_errors(block):
    with pytest.raises(ValueError, match="divisible"):
        ProxyAttention(10, heads=4)
    with pytest.raises(ValueError, match=r"allowed must be \(B, N\)"):
        block(torch.zeros(1, P, D), torch.zeros(1, N, D), torch.zeros(1, N, D), torch.ones(1, N + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="sample 0"):
        stack_references([torch.zeros(1, N, D)], [torch.zeros(2, N, dtype=torch.bool)], torch.zeros(N, D))
