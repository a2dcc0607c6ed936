"""Tests of the pure tensor kernels (gadlib.kernels: patches, residual, scoring)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from gadlib.kernels.patches import align_levels, local_aggregate, to_patches
from gadlib.kernels.residual import nearest_in_first, nearest_in_shots, nearest_neighbour, nearest_per_group, residual
from gadlib.kernels.scoring import (gaussian_blur, gaussian_kernel1d, image_score, topk_mean, upsample,
                                    upsample_blur)


def _brute_force(queries: torch.Tensor, bank: torch.Tensor, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    if metric == "l2":
        dist = torch.cdist(queries, bank)
    else:
        dist = 1 - torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(bank, dim=1).T
    value, index = dist.min(dim=1)
    return value, index


@pytest.fixture
def data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    # float64 so that the expanded |q|^2 + |b|^2 - 2 q.b form cannot flip a near-tie against cdist.
    return (torch.randn(23, 6, generator=gen, dtype=torch.float64),
            torch.randn(17, 6, generator=gen, dtype=torch.float64))


# -- nearest_neighbour ------------------------------------------------------------------------------

@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_nearest_neighbour_matches_brute_force(data, metric):
    queries, bank = data
    expected_dist, expected_idx = _brute_force(queries, bank, metric)
    dist, idx = nearest_neighbour(queries, bank, metric)
    assert torch.equal(idx, expected_idx)
    torch.testing.assert_close(dist, expected_dist, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_nearest_neighbour_chunking_changes_nothing(data, metric):
    queries, bank = data
    whole = nearest_neighbour(queries, bank, metric)
    chunked = nearest_neighbour(queries, bank, metric, query_chunk=7, bank_chunk=5)
    assert torch.equal(chunked[1], whole[1])
    # indices are identical; distances agree to rounding (BLAS may sum a blocked matmul differently)
    torch.testing.assert_close(chunked[0], whole[0], atol=1e-12, rtol=1e-12)
    expected_dist, expected_idx = _brute_force(queries, bank, metric)
    assert torch.equal(chunked[1], expected_idx)


def test_nearest_neighbour_known_answer():
    bank = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 5.0]])
    queries = torch.tensor([[1.0, 0.0], [9.0, 0.0], [0.0, 3.0], [10.0, 0.0]])
    dist, idx = nearest_neighbour(queries, bank, "l2", query_chunk=1, bank_chunk=1)
    assert idx.tolist() == [0, 1, 2, 1]
    torch.testing.assert_close(dist, torch.tensor([1.0, 1.0, 2.0, 0.0]))


def test_nearest_neighbour_of_bank_rows_is_themselves(data):
    _, bank = data
    dist, idx = nearest_neighbour(bank, bank, "l2", query_chunk=4, bank_chunk=3)
    assert torch.equal(idx, torch.arange(len(bank)))
    assert dist.abs().max() < 1e-6
    # cosine ignores scale: a scaled copy of a row is at distance 0 from it
    dist, idx = nearest_neighbour(3.5 * bank, bank, "cosine")
    assert torch.equal(idx, torch.arange(len(bank)))
    assert dist.abs().max() < 1e-9


@pytest.mark.parametrize("queries, bank, metric, match", [
    (torch.zeros(3, 4), torch.zeros(5, 4), "manhattan", "metric"),
    (torch.zeros(3, 4), torch.zeros(5, 3), "l2", "expected queries"),
    (torch.zeros(3), torch.zeros(5, 3), "l2", "expected queries"),
    (torch.zeros(3, 4), torch.zeros(0, 4), "l2", "empty"),
])
def test_nearest_neighbour_errors(queries, bank, metric, match):
    with pytest.raises(ValueError, match=match):
        nearest_neighbour(queries, bank, metric)


# -- nearest_per_group -------------------------------------------------------------------------------

@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("chunks", [{}, {"query_chunk": 7, "bank_chunk": 5}, {"query_chunk": 3, "bank_chunk": 1}])
def test_nearest_per_group_equals_per_group_brute_force(metric, chunks):
    gen = torch.Generator().manual_seed(1)
    queries = torch.randn(19, 5, generator=gen, dtype=torch.float64)
    group_size, groups = 4, 6
    bank = torch.randn(groups * group_size, 5, generator=gen, dtype=torch.float64)
    out = nearest_per_group(queries, bank, group_size, metric, **chunks)
    assert out.shape == (19, groups)
    for g in range(groups):
        expected, _ = _brute_force(queries, bank[g * group_size:(g + 1) * group_size], metric)
        torch.testing.assert_close(out[:, g], expected, atol=1e-9, rtol=1e-9)
    # the running minimum over groups is the nearest neighbour among the first g groups
    running = torch.cummin(out, dim=1).values
    for g in range(1, groups + 1):
        expected, _ = nearest_neighbour(queries, bank[:g * group_size], metric)
        torch.testing.assert_close(running[:, g - 1], expected, atol=1e-9, rtol=1e-9)
    assert (running[:, 1:] <= running[:, :-1]).all()
    # distances alone (amin) and distances with their rows (min + index) are the same numbers
    with_rows, rows = nearest_per_group(queries, bank, group_size, metric, return_index=True, **chunks)
    assert torch.equal(with_rows, out) and rows.shape == (19, groups)


@pytest.mark.parametrize("group_size, rows", [(0, 8), (3, 8), (4, 0)])
def test_nearest_per_group_errors(group_size, rows):
    with pytest.raises(ValueError, match="group_size"):
        nearest_per_group(torch.zeros(2, 3), torch.zeros(rows, 3), group_size)
    with pytest.raises(ValueError, match="metric"):
        nearest_per_group(torch.zeros(2, 3), torch.zeros(4, 3), 2, metric="dot")


# -- nearest_in_shots ---------------------------------------------------------------------------------

@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("search", ["exact", "float16"])
@pytest.mark.parametrize("group_size, groups, shots, chunks", [
    (4, 6, [1, 2, 4, 6], {}), (4, 6, [3], {"query_chunk": 5, "bank_chunk": 3}),
    (25, 3, [1, 3], {}), (25, 3, [2, 3], {"query_chunk": 7, "bank_chunk": 10}), (1, 5, [5, 1], {})])
def test_nearest_in_shots_equals_rows_of_every_group(metric, search, group_size, groups, shots, chunks):
    gen = torch.Generator().manual_seed(group_size * groups)
    queries = torch.randn(41, 6, generator=gen)
    bank = torch.randn(groups * group_size, 6, generator=gen)
    found = nearest_in_shots(queries, bank, group_size, shots, metric, search=search, **chunks)
    every = nearest_per_group(queries, bank, group_size, metric, return_index=True, search=search, **chunks)
    assert sorted(found) == sorted(set(shots))
    for k in shots:
        distances, rows = nearest_in_first(*every, k)
        assert torch.equal(found[k][1], rows) and torch.equal(found[k][0], distances)
        assert (rows < k * group_size).all()


def test_nearest_in_shots_ties_go_to_the_first_group_and_row():
    # every group holds the same rows, twice over: all groups tie and, in each, two rows tie
    group = torch.tensor([[0.0, 1.0], [2.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    bank = group.repeat(3, 1)
    queries = torch.tensor([[0.0, 0.9], [1.9, 0.1], [1.0, 0.5]])   # nearest: row 0, row 1, a 4-way tie
    found = nearest_in_shots(queries, bank, 4, [1, 2, 3])
    every = nearest_per_group(queries, bank, 4, return_index=True)
    for k in (1, 2, 3):
        assert found[k][1].tolist() == [0, 1, 0]
        assert torch.equal(found[k][1], nearest_in_first(*every, k)[1])
    # an all-zero bank: every row of every group ties
    zeros = nearest_in_shots(torch.randn(5, 2), torch.zeros(12, 2), 3, [4])
    assert zeros[4][1].tolist() == [0] * 5


def test_nearest_in_shots_faiss_takes_the_direct_path():
    pytest.importorskip("faiss")
    queries, bank = _clustered(5)
    found = nearest_in_shots(queries, bank, 400, [1, 3], search="faiss")
    exact = nearest_in_shots(queries, bank, 400, [1, 3])
    for k in (1, 3):
        assert torch.equal(found[k][1], exact[k][1])
        torch.testing.assert_close(found[k][0], exact[k][0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shots", [[], [0], [4], [1, 4]])
def test_nearest_in_shots_errors(shots):
    with pytest.raises(ValueError, match="shots"):
        nearest_in_shots(torch.zeros(2, 3), torch.zeros(6, 3), 2, shots)
    with pytest.raises(ValueError, match="group_size"):
        nearest_in_shots(torch.zeros(2, 3), torch.zeros(7, 3), 2, [1])


# -- residual -----------------------------------------------------------------------------------------

def test_residual_modes_hand_example():
    queries = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    bank = torch.tensor([[0.0, 0.0], [3.0, 1.0], [1.0, 1.0]])
    indices = torch.tensor([1, 2])
    diff = residual(queries, bank, indices, "difference")
    torch.testing.assert_close(diff, torch.tensor([[-2.0, 1.0], [-1.0, -2.0]]))
    torch.testing.assert_close(residual(queries, bank, indices, "squared"), torch.tensor([[4.0, 1.0], [1.0, 4.0]]))
    with pytest.raises(ValueError, match="mode"):
        residual(queries, bank, indices, "absolute")


def test_residual_after_matching_is_zero_for_bank_rows(data):
    _, bank = data
    _, idx = nearest_neighbour(bank, bank)
    assert residual(bank, bank, idx).abs().max() == 0


# -- patches ------------------------------------------------------------------------------------------

def test_local_aggregate_identity_and_known_windows():
    features = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).reshape(2, 3, 5, 6) ** 1.5
    assert torch.equal(local_aggregate(features, 1), features)
    out = local_aggregate(features, 3)
    assert out.shape == features.shape
    # interior (y=2, x=3): the full 3x3 window
    torch.testing.assert_close(out[1, 2, 2, 3], features[1, 2, 1:4, 2:5].mean())
    # corner (0, 0): only the 2x2 real neighbours count (padding excluded from the mean)
    torch.testing.assert_close(out[0, 1, 0, 0], features[0, 1, 0:2, 0:2].mean())
    # bottom-right corner and an edge
    torch.testing.assert_close(out[0, 0, 4, 5], features[0, 0, 3:5, 4:6].mean())
    torch.testing.assert_close(out[0, 0, 0, 3], features[0, 0, 0:2, 2:5].mean())
    # a constant map stays constant, including at the borders
    torch.testing.assert_close(local_aggregate(torch.full((1, 2, 4, 4), 7.0), 3), torch.full((1, 2, 4, 4), 7.0))


@pytest.mark.parametrize("neighbourhood", [3, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_local_aggregate_equals_plain_pooling_bit_for_bit(neighbourhood, dtype):
    # pooled on a channels-last copy for speed: the values must be the NCHW pooling's, in the NCHW layout
    features = torch.randn(3, 7, 9, 6, generator=torch.Generator().manual_seed(neighbourhood), dtype=dtype)
    out = local_aggregate(features, neighbourhood)
    plain = torch.nn.functional.avg_pool2d(features, neighbourhood, stride=1, padding=neighbourhood // 2,
                                           count_include_pad=False)
    assert torch.equal(out, plain) and out.is_contiguous() and out.dtype == dtype


def test_local_aggregate_even_size_raises():
    with pytest.raises(ValueError, match="odd"):
        local_aggregate(torch.zeros(1, 1, 4, 4), 4)


def test_align_levels_shapes_and_constants():
    levels = [torch.full((2, 3, 8, 8), 1.0), torch.full((2, 5, 4, 4), 2.0), torch.full((2, 2, 2, 2), 3.0)]
    assert align_levels(levels, "coarsest").shape == (2, 10, 2, 2)
    assert align_levels(levels, "finest").shape == (2, 10, 8, 8)
    for grid in ("coarsest", "finest", 4, 3):
        out = align_levels(levels, grid)
        side = {"coarsest": 2, "finest": 8}.get(grid, grid)
        assert out.shape == (2, 10, side, side)
        torch.testing.assert_close(out[:, :3], torch.full((2, 3, side, side), 1.0))
        torch.testing.assert_close(out[:, 3:8], torch.full((2, 5, side, side), 2.0))
        torch.testing.assert_close(out[:, 8:], torch.full((2, 2, side, side), 3.0))


def test_align_levels_downsampling_is_area_average():
    fine = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    out = align_levels([fine, torch.zeros(1, 1, 2, 2)], "coarsest")
    torch.testing.assert_close(out[0, 0], torch.tensor([[2.5, 4.5], [10.5, 12.5]]))


@pytest.mark.parametrize("grid", ["middle", 0, -2])
def test_align_levels_bad_grid(grid):
    with pytest.raises(ValueError, match="grid"):
        align_levels([torch.zeros(1, 1, 4, 4)], grid)


def test_to_patches_order():
    features = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    patches = to_patches(features)
    assert patches.shape == (8, 3)
    # row index = image * H * W + y * W + x
    assert torch.equal(patches[1 * 4 + 1 * 2 + 0], features[1, :, 1, 0])


# -- scoring ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size, sigma", [(64, 4.0), (32, 2.0), (16, 4.0), (40, 0.0)])
def test_upsample_blur_equals_blur_of_upsample(size, sigma):
    maps = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(2))
    expected = gaussian_blur(upsample(maps, size), sigma)
    out = upsample_blur(maps, size, sigma)
    assert out.shape == (3, size, size)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("offset", [0.5, 3.0])
def test_upsample_with_cell_centres_equals_blur_of_upsample_and_the_tiling_convention(offset):
    maps = torch.rand(3, 7, 7, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(upsample_blur(maps, 56, 2.0, offset), gaussian_blur(upsample(maps, 56, offset), 2.0),
                               atol=1e-5, rtol=0)
    # offset = stride / 2 is the tiling convention of offset=None (align_corners=False)
    torch.testing.assert_close(upsample(maps, 56, 4.0), upsample(maps, 56), atol=1e-6, rtol=0)
    torch.testing.assert_close(upsample_blur(maps, 56, 2.0, 4.0), upsample_blur(maps, 56, 2.0), atol=1e-6, rtol=0)


@pytest.mark.parametrize("sigma", [0.0, 4.0])
def test_one_hot_cell_peaks_on_that_cells_centre(sigma):
    stride, side = 8, 7
    for i, j in [(3, 3), (1, 5), (0, 6)] if sigma == 0 else [(3, 3), (2, 4)]:   # a blurred edge peaks at the edge
        grid = torch.zeros(1, side, side)
        grid[0, i, j] = 1.0
        centred = upsample_blur(grid, stride * side, sigma, offset=0.5)[0]
        # the cell's receptive field is centred on pixel (stride * i, stride * j): the peak is there
        assert np.unravel_index(int(centred.argmax()), centred.shape) == (stride * i, stride * j)
        assert centred[stride * i, stride * j] == pytest.approx(float(centred.max()))
        tiled = upsample_blur(grid, stride * side, sigma)[0]       # the old convention: half a stride down-right
        peak = np.unravel_index(int(tiled.argmax()), tiled.shape)
        assert peak != (stride * i, stride * j) and abs(peak[0] - (stride * i + 3.5)) <= 0.5 + (i == 0) * 4


def test_effective_centres_known_answers_on_hand_built_convolutions():
    from torch import nn

    from gadlib.backbones import effective_centres

    conv = nn.Conv2d(3, 1, 3, stride=2, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        assert effective_centres(lambda x: [conv(x)], 32, [2]) == [0.5]      # symmetric: on pixel 2i
        conv.weight.zero_()
        conv.weight[..., 0, 0] = 1.0                                           # only the up-left tap
    assert effective_centres(lambda x: [conv(x)], 32, [2]) == [-0.5]          # on pixel 2i - 1
    with torch.inference_mode():                                               # as inside predict_shots
        assert effective_centres(lambda x: [conv(x)], 32, [2]) == [-0.5]


def test_the_default_backbones_maps_put_cells_on_their_receptive_fields():
    from gadlib.backbones import Backbone

    backbone = Backbone(image_size=128)
    offsets = backbone.level_offsets()
    assert len(offsets) == len(backbone.strides) == 2
    # Lite0's learned kernels centre its cells up-left of pixel stride * i: far from the tiling convention
    # (stride / 2 = 4 and 8 px) that the maps used before, and not quite on the geometric centre either
    for offset, stride in zip(offsets, backbone.strides):
        assert -10 < offset < 0.5 and stride / 2 - offset > 4, (offset, stride)
    assert backbone.level_offsets() == offsets                 # measured once, then the same
    # an aligned grid: the mean of where each level's cells land on it
    assert backbone.grid_offset(8) == pytest.approx((offsets[0] + 4 + offsets[1]) / 2)
    assert backbone.grid_offset(16) == pytest.approx((offsets[0] + offsets[1] - 4) / 2)


def test_upsample_blur_non_square_map():
    maps = torch.rand(2, 6, 4, generator=torch.Generator().manual_seed(3))
    expected = gaussian_blur(upsample(maps, 24), 2.0)
    torch.testing.assert_close(upsample_blur(maps, 24, 2.0), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("sigma", [1.0, 4.0, 20.0])
def test_gaussian_blur_of_constant_is_constant(sigma):
    maps = torch.full((2, 30, 30), 3.25)
    torch.testing.assert_close(gaussian_blur(maps, sigma), maps)


def test_gaussian_kernel_follows_scipy_radius_rule():
    kernel = gaussian_kernel1d(4.0)
    assert len(kernel) == 2 * 16 + 1
    torch.testing.assert_close(kernel.sum(), torch.tensor(1.0))
    assert torch.equal(kernel, kernel.flip(0))


def test_gaussian_blur_impulse_and_scipy_interior():
    sigma = 2.0
    impulse = torch.zeros(1, 41, 41)
    impulse[0, 20, 20] = 1.0
    blurred = gaussian_blur(impulse, sigma)
    assert abs(blurred.sum().item() - 1.0) < 1e-4
    assert blurred[0].argmax().item() == 20 * 41 + 20
    rng = np.random.default_rng(4)
    array = rng.random((40, 50)).astype(np.float32)
    ours = gaussian_blur(torch.from_numpy(array)[None], sigma)[0].numpy()
    theirs = ndimage.gaussian_filter(array.astype(np.float64), sigma, mode="reflect", truncate=4.0)
    radius = int(4.0 * sigma + 0.5)
    # borders differ (torch's reflect excludes the edge pixel, scipy's includes it); the interior agrees
    np.testing.assert_allclose(ours[radius:-radius, radius:-radius], theirs[radius:-radius, radius:-radius],
                               atol=1e-5)


def test_gaussian_blur_zero_sigma_is_identity():
    maps = torch.rand(1, 5, 5)
    assert gaussian_blur(maps, 0) is maps


def test_topk_mean_and_image_score_known_answers():
    maps = torch.arange(200, dtype=torch.float32).reshape(2, 10, 10)
    torch.testing.assert_close(topk_mean(maps, 0.05), torch.tensor([97.0, 197.0]))   # mean of top 5
    torch.testing.assert_close(topk_mean(maps, 0.0), torch.tensor([99.0, 199.0]))    # at least one value
    torch.testing.assert_close(topk_mean(maps, 0.011), torch.tensor([98.5, 198.5]))  # ceil(1.1) = 2
    torch.testing.assert_close(image_score(maps, "max"), torch.tensor([99.0, 199.0]))
    torch.testing.assert_close(image_score(maps, "top1%"), torch.tensor([99.0, 199.0]))  # 1 % of 100 = 1
    big = torch.arange(400, dtype=torch.float32).reshape(1, 20, 20)
    torch.testing.assert_close(image_score(big, "top1%"), torch.tensor([(399 + 398 + 397 + 396) / 4]))
    with pytest.raises(ValueError, match="reduction"):
        image_score(maps, "mean")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_topk_mean_is_bit_for_bit_the_mean_of_torch_topk(dtype):
    generator = torch.Generator().manual_seed(0)
    maps = torch.nn.functional.avg_pool2d(torch.rand(6, 1, 96, 96, generator=generator), 5, 1, 2)[:, 0].to(dtype)
    maps[0, :3, :3] = maps[0].max()                          # ties at the top
    maps[1, 5, 5] = float("nan")                             # NaN ranks highest, as in torch.topk
    for fraction in (0.01, 0.1, 1.0):
        k = max(1, math.ceil(fraction * 96 * 96))
        expected = maps.flatten(1).topk(k, dim=1).values.mean(1)
        torch.testing.assert_close(topk_mean(maps, fraction), expected, rtol=0, atol=0, equal_nan=True)
    grad = maps.clone().requires_grad_()                      # training keeps torch's path, with gradients
    topk_mean(grad[2:], 0.01).sum().backward()
    assert grad.grad[2:].sum().item() == pytest.approx(4.0)


def test_nearest_per_group_rejects_mismatched_widths():
    from gadlib.kernels.residual import nearest_per_group

    with pytest.raises(ValueError, match=r"\(N, D\).*\(M, D\)"):
        nearest_per_group(torch.zeros(3, 4), torch.zeros(6, 5), group_size=3)


# -- search variants (exact blocks, float16, faiss) ---------------------------------------------------

def _clustered(seed: int, groups: int = 3, group_size: int = 400, queries: int = 300, dim: int = 8):
    """Queries near bank rows (as real patch features are): a clear nearest neighbour, few near-ties."""
    gen = torch.Generator().manual_seed(seed)
    bank = torch.randn(groups * group_size, dim, generator=gen)
    picks = torch.randint(0, len(bank), (queries,), generator=gen)
    return bank[picks] + 0.05 * torch.randn(queries, dim, generator=gen), bank


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_float16_search_is_the_exact_search_of_rounded_features(metric):
    queries, bank = _clustered(2)
    dist, rows = nearest_per_group(queries, bank, 400, metric, return_index=True, search="float16")
    rounded = nearest_per_group(queries.half().float(), bank.half().float(), 400, metric, return_index=True)
    assert torch.equal(rows, rounded[1])
    torch.testing.assert_close(dist, rounded[0])
    exact = nearest_per_group(queries, bank, 400, metric)
    assert not torch.equal(dist, exact)                      # it does round ...
    assert (dist - exact).abs().max() < 5e-3 * exact.max()   # ... by float16's precision only


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_faiss_flat_search_equals_the_exact_search(metric):
    pytest.importorskip("faiss")
    queries, bank = _clustered(3)
    exact = nearest_per_group(queries, bank, 400, metric, return_index=True)
    found = nearest_per_group(queries, bank, 400, metric, return_index=True, search="faiss")
    assert torch.equal(found[1], exact[1])
    torch.testing.assert_close(found[0], exact[0], atol=1e-4, rtol=1e-4)
    single = nearest_neighbour(queries, bank, metric, search="faiss")
    assert torch.equal(single[1], nearest_neighbour(queries, bank, metric)[1])


def test_faiss_ivf_search_is_approximate_but_never_nearer_than_exact():
    pytest.importorskip("faiss")
    queries, bank = _clustered(4, groups=1, group_size=4000, queries=500)
    exact_dist, exact_rows = nearest_neighbour(queries, bank)
    dist, rows = nearest_neighbour(queries, bank, search="faiss-ivf")
    assert rows.min() >= 0 and rows.max() < len(bank)
    # an approximate search may miss the nearest row, never find a nearer one; the distance it
    # reports is the true distance to the row it found
    assert (dist >= exact_dist - 1e-4).all()
    torch.testing.assert_close(dist, (queries - bank[rows]).norm(dim=1), atol=1e-4, rtol=1e-4)
    recall = (rows == exact_rows).float().mean().item()
    assert 0.8 < recall <= 1.0


def test_search_errors(monkeypatch):
    with pytest.raises(ValueError, match="search"):
        nearest_neighbour(torch.zeros(2, 3), torch.zeros(4, 3), search="annoy")
    monkeypatch.setitem(__import__("sys").modules, "faiss", None)       # faiss not installed
    with pytest.raises(ImportError, match=r"gadlib\[faiss\]"):
        nearest_neighbour(torch.zeros(2, 3), torch.ones(4, 3), search="faiss")


# -- coverage --------------------------------------------------------------------------------------

def test_cell_coverage_tiles_like_average_pooling_and_moves_with_the_receptive_field():
    from gadlib.kernels.coverage import cell_coverage, window_matrix

    masks = (torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(5)) > 0.7).float()
    tiled = torch.nn.functional.adaptive_avg_pool2d(masks[:, None], 4)[:, 0]
    torch.testing.assert_close(cell_coverage(masks, (4, 4)), tiled)
    torch.testing.assert_close(cell_coverage(masks, (4, 4), offset=4.0), tiled)     # stride / 2: the same
    # windows are a stride wide, cut at the image and stretched to its edges: every pixel is in some cell,
    # and a row is a share (a full mask covers 1 of every window)
    weights = window_matrix(4, 32, offset=0.5)
    assert torch.allclose(weights.sum(1), torch.ones(4))
    # [0, 4.5), [4.5, 12.5), [12.5, 20.5), [20.5, 32): pixels touched, half pixels included
    assert torch.allclose((weights > 0).sum(1).float(), torch.tensor([5.0, 9.0, 9.0, 12.0]))
    assert (weights.sum(0) > 0).all()
    # a defect on pixels 14..17 (centre 16) belongs to the cell centred there: cell 2 with centres at
    # 0.5 + 8 i (16.5); cell 1 and 2 share it when cells tile the image (centres 12 and 20)
    square = torch.zeros(1, 32, 32)
    square[0, 14:18, 14:18] = 1
    centred = cell_coverage(square, (4, 4), offset=0.5)[0]
    assert centred[2, 2] == pytest.approx(16 / 64) and centred.sum() == pytest.approx(16 / 64)
    shared = cell_coverage(square, (4, 4))[0]
    assert shared[1, 1] == pytest.approx(4 / 64) and shared[2, 2] == pytest.approx(4 / 64)
    with pytest.raises(ValueError, match=r"\(N, S, S\)"):
        cell_coverage(square[0], (4, 4))
