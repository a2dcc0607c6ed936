"""VOD kernels (issue 5 groundwork): exact round trip, what each reading keeps, invariances, errors."""
from __future__ import annotations

import pytest
import torch

from gadlib.kernels.vod import channel_vod, decompose, position_vod, recombine, resample_sorted


def test_round_trip_is_exact_and_values_are_sorted():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 17)
    x[0, 0, 3] = x[0, 0, 7]                      # a tie
    values, order = decompose(x)
    assert torch.equal(recombine(values, order), x)
    assert (values.diff(dim=-1) >= 0).all()
    assert torch.equal(torch.sort(order, dim=-1).values, torch.arange(17).expand(2, 5, 17))


def test_values_ignore_where_things_are_and_order_ignores_how_large():
    torch.manual_seed(1)
    x = torch.randn(3, 11)
    shuffled = x[:, torch.randperm(11)]
    assert torch.equal(decompose(shuffled)[0], decompose(x)[0])          # same values, other places
    assert torch.equal(decompose(3 * x + 2)[1], decompose(x)[1])         # monotone change: same order


def test_channel_vod_keeps_the_order_and_replaces_the_values():
    torch.manual_seed(2)
    features = torch.randn(2, 4, 9) * torch.tensor([1.0, 10.0, 0.1, 5.0])[None, :, None] + 3
    for values in ("ranks", "gaussian"):
        out = channel_vod(features, values)
        assert torch.equal(decompose(out)[1], decompose(features)[1]), values
        # The domain-specific scale and offset are gone: every channel has the same sorted values.
        sorted_out = torch.sort(out, dim=-1).values
        torch.testing.assert_close(sorted_out, sorted_out[:1, :1].expand_as(sorted_out))
    ranks = channel_vod(features, "ranks")
    assert ranks.min() == 0 and ranks.max() == 1
    gaussian = torch.sort(channel_vod(features, "gaussian"), dim=-1).values[0, 0]
    torch.testing.assert_close(gaussian, -gaussian.flip(0))              # symmetric normal quantiles
    reference = torch.randn(4, 9) * 2
    mapped = channel_vod(features, "reference", reference)
    torch.testing.assert_close(torch.sort(mapped, dim=-1).values, torch.sort(reference, dim=-1).values.expand(2, 4, 9))
    assert torch.equal(decompose(mapped)[1], decompose(features)[1])


def test_resample_sorted_keeps_quantiles():
    sorted_values = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
    torch.testing.assert_close(resample_sorted(sorted_values, 9), torch.linspace(0, 4, 9))
    torch.testing.assert_close(resample_sorted(sorted_values, 2), torch.tensor([0.0, 4.0]))
    assert torch.equal(resample_sorted(sorted_values, 5), sorted_values)


def test_position_vod_invariances():
    torch.manual_seed(3)
    residuals = torch.randn(6, 8)
    permuted = residuals[:, torch.randperm(8)]
    for mode in ("magnitude", "signed"):
        assert torch.equal(position_vod(permuted, mode), position_vod(residuals, mode)), mode
    magnitude = position_vod(residuals)
    assert (magnitude >= 0).all() and (magnitude.diff(dim=-1) <= 0).all()
    torch.testing.assert_close(magnitude.norm(dim=-1), residuals.norm(dim=-1))     # nothing lost but order
    within = torch.cat([torch.randperm(4), 4 + torch.randperm(4)])
    assert torch.equal(position_vod(residuals[:, within], "grouped", 2), position_vod(residuals, "grouped", 2))
    across = torch.tensor([4, 5, 6, 7, 0, 1, 2, 3])
    assert not torch.equal(position_vod(residuals[:, across], "grouped", 2), position_vod(residuals, "grouped", 2))


def test_vod_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"\(B, C, N\)"):
        channel_vod(torch.zeros(4, 9))
    with pytest.raises(ValueError, match="values must be one of"):
        channel_vod(torch.zeros(1, 4, 9), "median")
    with pytest.raises(ValueError, match="needs reference"):
        channel_vod(torch.zeros(1, 4, 9), "reference", torch.zeros(3, 9))
    with pytest.raises(ValueError, match="must divide"):
        position_vod(torch.zeros(2, 6), "grouped", 4)
    with pytest.raises(ValueError, match="mode must be one of"):
        position_vod(torch.zeros(2, 6), "rank")
    with pytest.raises(ValueError, match="differ in length"):
        recombine(torch.zeros(3), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("shape", [(500, 152), (7, 4, 9), (3, 2), (4, 1)])
def test_sorted_descending_is_torch_sort_values_and_passes_gradients_alike(shape):
    from gadlib.kernels.scoring import sorted_descending

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=generator)
    x[0, ..., :2] = 0.5                                   # a tie
    assert torch.equal(sorted_descending(x), torch.sort(x, dim=-1, descending=True).values)
    assert torch.equal(sorted_descending(x.double()), torch.sort(x.double(), dim=-1, descending=True).values)
    with_nan = x.clone()
    with_nan[-1, ..., -1] = float("nan")                  # torch puts NaN first in a descending sort
    torch.testing.assert_close(sorted_descending(with_nan), torch.sort(with_nan, dim=-1, descending=True).values,
                               rtol=0, atol=0, equal_nan=True)
    weights = torch.randn(*shape, generator=generator)
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    (sorted_descending(ours) * weights).sum().backward()
    (torch.sort(theirs, dim=-1, descending=True).values * weights).sum().backward()
    untied = torch.ones_like(x, dtype=torch.bool)
    untied[0] = False                                      # a tie may route its gradient to either twin
    assert torch.equal(ours.grad[untied], theirs.grad[untied])
    assert torch.equal(ours.grad[0].sum(-1), theirs.grad[0].sum(-1))
