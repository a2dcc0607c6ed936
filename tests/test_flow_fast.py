"""The conditional flow's inference path on a grid of positions equals its FrEIA forward."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gadlib.kernels.position import sinusoidal_position_2d
from gadlib.modules.flow import ConditionalFlow


def _flow(channels: int, cond_dim: int, perturb: float = 0.0, dtype=torch.float32) -> ConditionalFlow:
    torch.manual_seed(channels + cond_dim)
    np.random.seed(channels)            # FrEIA draws its soft permutations from numpy
    flow = ConditionalFlow(channels, cond_dim, blocks=4).to(dtype).eval()
    with torch.no_grad():               # every parameter, permutations and global affine included
        for parameter in flow.parameters():
            parameter.add_(perturb * torch.randn_like(parameter))
    return flow


CASES = [(40, 16), (7, 8), (2, 4), (6, 0)]


def _compare(flow: ConditionalFlow, channels: int, cond_dim: int, dtype=torch.float32):
    images, height, width = 3, 4, 5
    codes = sinusoidal_position_2d(cond_dim, height, width).flatten(1).T.to(dtype) if cond_dim else None
    features = 2 * torch.randn(images * height * width, channels, dtype=dtype)
    with torch.no_grad():
        expected = flow.log_likelihood(features, codes.repeat(images, 1) if cond_dim else None)
    found = flow.log_likelihood_grid(features, codes)
    assert found.shape == expected.shape
    # (B, P, C) features give the same rows, and so does any number of images per pass
    torch.testing.assert_close(flow.log_likelihood_grid(features.reshape(images, -1, channels), codes), found)
    for chunk_rows in (1, 2 * height * width + 1, 10 ** 6):
        torch.testing.assert_close(flow.log_likelihood_grid(features, codes, chunk_rows=chunk_rows), found)
    return found, expected


@pytest.mark.parametrize("channels, cond_dim", CASES)
@pytest.mark.parametrize("perturb", [0.0, 0.05])
def test_grid_path_equals_the_freia_forward(channels, cond_dim, perturb):
    found, expected = _compare(_flow(channels, cond_dim, perturb), channels, cond_dim)
    torch.testing.assert_close(found, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels, cond_dim", CASES)
def test_grid_path_is_the_same_algebra_for_any_parameters(channels, cond_dim):
    # Fully random parameters (non-orthogonal permutations) amplify float32 rounding; in float64 the
    # two computations must agree to rounding whatever the parameters are.
    flow = _flow(channels, cond_dim, perturb=0.5, dtype=torch.float64)
    found, expected = _compare(flow, channels, cond_dim, torch.float64)
    torch.testing.assert_close(found, expected, rtol=1e-10, atol=1e-10)


def test_grid_path_under_inference_mode_and_without_gradients():
    flow = _flow(8, 8, perturb=0.05).train()       # eval or train: the blocks have no dropout or norm
    codes = torch.randn(6, 8)
    features = torch.randn(12, 8, requires_grad=True)
    found = flow.log_likelihood_grid(features, codes)
    assert not found.requires_grad
    with torch.inference_mode():
        torch.testing.assert_close(flow.log_likelihood_grid(features.detach(), codes), found)


def test_grid_path_rejects_wrong_shapes():
    flow = ConditionalFlow(4, cond_dim=8, blocks=2)
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        flow.log_likelihood_grid(torch.zeros(6, 5), torch.zeros(3, 8))
    with pytest.raises(ValueError, match=r"\(P, 8\)"):
        flow.log_likelihood_grid(torch.zeros(6, 4), torch.zeros(4, 8))       # 4 positions do not divide 6 rows
    with pytest.raises(ValueError, match=r"\(P, 8\)"):
        flow.log_likelihood_grid(torch.zeros(6, 4), None)


@pytest.mark.parametrize("channels, cond_dim", [(40, 16), (7, 8), (2, 4)])
def test_indexed_training_path_equals_the_freia_forward_in_value_and_gradients(channels, cond_dim):
    flow = _flow(channels, cond_dim, perturb=0.5, dtype=torch.float64).train()
    codes = torch.randn(9, cond_dim, dtype=torch.float64)
    positions = torch.tensor([0, 3, 3, 8, 1, 0, 5, 5, 5, 2, 7])           # repeats: gathered rows share a code
    features = 2 * torch.randn(len(positions), channels, dtype=torch.float64)

    def value_and_grads(compute):
        flow.zero_grad()
        x = features.clone().requires_grad_(True)
        out = compute(x)
        (out * torch.linspace(-1, 2, len(out), dtype=out.dtype)).sum().backward()   # not a plain sum
        return out.detach(), x.grad, {n: p.grad.clone() for n, p in flow.named_parameters() if p.grad is not None}

    expected = value_and_grads(lambda x: flow.log_likelihood(x, codes[positions]))
    found = value_and_grads(lambda x: flow.log_likelihood_at(x, codes, positions))
    torch.testing.assert_close(found[0], expected[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(found[1], expected[1], rtol=1e-10, atol=1e-10)
    assert found[2].keys() == expected[2].keys() and len(found[2]) >= 4 * 4   # every trained tensor of 4 blocks
    for name in expected[2]:
        torch.testing.assert_close(found[2][name], expected[2][name], rtol=1e-7, atol=1e-10, msg=lambda m: name + m)


def test_indexed_path_rejects_wrong_shapes():
    flow = ConditionalFlow(4, cond_dim=8, blocks=2)
    with pytest.raises(ValueError, match="one position per feature row"):
        flow.log_likelihood_at(torch.zeros(6, 4), torch.zeros(3, 8), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(P, 8\)"):
        flow.log_likelihood_at(torch.zeros(6, 4), torch.zeros(3, 7), torch.zeros(6, dtype=torch.long))
