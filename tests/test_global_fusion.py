"""The image-level residual kernel and the label-free fusion of score channels, by hand-computed answers."""
from __future__ import annotations

import math

import pytest
import torch

from gadlib.kernels.fusion import calibrate, excess, fuse
from gadlib.kernels.global_residual import channel_statistics, image_residual, patch_spread, statistics_distance


def _maps(seed: int, shape=(3, 4, 5, 5)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# -- image-level residual -----------------------------------------------------------------------------

def test_channel_statistics_by_hand():
    # one image, two channels on a 1 x 4 grid: means 2.5 and 0, population stds sqrt(1.25) and 1
    features = torch.tensor([[[[1.0, 2.0, 3.0, 4.0]], [[-1.0, 1.0, -1.0, 1.0]]]])
    torch.testing.assert_close(channel_statistics(features),
                               torch.tensor([[2.5, 0.0, math.sqrt(1.25), 1.0]], dtype=torch.float64))


def test_patch_spread_pools_every_position_of_every_reference():
    refs = torch.tensor([[[[0.0, 2.0]]], [[[4.0, 6.0]]]])        # one channel: values 0, 2, 4, 6
    torch.testing.assert_close(patch_spread(refs), torch.tensor([math.sqrt(5.0)] * 2, dtype=torch.float64))


def test_statistics_distance_by_hand():
    q = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    r = torch.tensor([[1.0, 2.0], [3.0, 2.0]], dtype=torch.float64)
    unit = torch.tensor([2.0, 1.0], dtype=torch.float64)
    # second reference: scaled difference (1, 0), root-mean-square over 2 statistics = 1 / sqrt(2)
    torch.testing.assert_close(statistics_distance(q, r, unit), torch.tensor([[0.0, 1 / math.sqrt(2)]],
                                                                             dtype=torch.float64))


def test_a_reference_scored_against_itself_is_zero():
    levels = [_maps(0), _maps(1, (3, 6, 3, 3))]
    scores = image_residual([level[1:2] for level in levels], levels)
    assert scores.shape == (1,)
    assert scores.item() == pytest.approx(0.0, abs=1e-12)


def test_image_residual_sees_a_global_change_that_no_patch_shows():
    refs = _maps(2, (4, 3, 8, 8))
    normal = _maps(3, (1, 3, 8, 8))
    flatter = 0.8 * normal          # every position a little closer to 0: a global change
    scores = image_residual([torch.cat([normal, flatter])], [refs])
    assert scores[1] > scores[0]


def test_image_residual_is_invariant_to_a_common_scale_of_the_features():
    queries, refs = _maps(4), _maps(5)
    torch.testing.assert_close(image_residual([3 * queries], [3 * refs]), image_residual([queries], [refs]))


def test_image_residual_rejects_mismatched_input():
    with pytest.raises(ValueError, match="channel counts"):
        image_residual([_maps(0)], [_maps(1, (2, 3, 5, 5))])
    with pytest.raises(ValueError, match="number of levels"):
        image_residual([_maps(0)], [])
    with pytest.raises(ValueError, match="positive"):
        statistics_distance(torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([1.0, 0.0]))


# -- calibration and fusion ---------------------------------------------------------------------------

def test_calibrate_is_a_z_score_without_shrinkage():
    normal = torch.tensor([1.0, 3.0])                      # mean 2, population std 1
    torch.testing.assert_close(calibrate(torch.tensor([2.0, 5.0]), normal, shrink=0.0),
                               torch.tensor([0.0, 3.0], dtype=torch.float64))


def test_calibrate_floors_the_spread_at_a_share_of_the_channels_size():
    normal = torch.tensor([4.0, 4.0])                      # constant: variance 0, size 4
    # spread = 0.5 * 4 = 2: a query at 8 is 2 spreads above the normal mean
    torch.testing.assert_close(calibrate(torch.tensor([8.0]), normal, shrink=0.5),
                               torch.tensor([2.0], dtype=torch.float64))


def test_excess_counts_only_what_rises_above_every_normal_score():
    normal = torch.tensor([1.0, 2.0, 3.0])                 # max 3, mean 2
    torch.testing.assert_close(excess(torch.tensor([0.5, 3.0, 7.0]), normal),
                               torch.tensor([0.0, 0.0, 2.0], dtype=torch.float64))
    # a constant channel is well defined: the excess over that constant, in its units
    torch.testing.assert_close(excess(torch.tensor([6.0]), torch.tensor([4.0, 4.0])),
                               torch.tensor([0.5], dtype=torch.float64))


def test_a_constant_channel_at_zero_is_left_out():
    assert torch.equal(calibrate(torch.tensor([1.0, 2.0]), torch.zeros(3), shrink=0.1),
                       torch.zeros(2, dtype=torch.float64))
    assert torch.equal(excess(torch.tensor([1.0, 2.0]), torch.zeros(3)), torch.zeros(2, dtype=torch.float64))
    local = (torch.tensor([0.5, 0.9]), torch.tensor([0.4, 0.6, 0.5]))
    for others in ("z", "excess"):
        fused = fuse([local, (torch.tensor([3.0, -1.0]), torch.zeros(3))], shrink=0.1, others=others)
        torch.testing.assert_close(fused, calibrate(*local, shrink=0.1))


@pytest.mark.parametrize("others", ["z", "excess"])
@pytest.mark.parametrize("combine", ["sum", "max"])
def test_fusion_is_unchanged_when_a_channel_is_rescaled(others, combine):
    gen = torch.Generator().manual_seed(0)
    local = (torch.rand(7, generator=gen), torch.rand(4, generator=gen))
    global_ = (torch.rand(7, generator=gen) * 50, torch.rand(4, generator=gen) * 50)
    rule = dict(shrink=0.1, others=others, weight=2.0, combine=combine)
    expected = fuse([local, global_], **rule)
    torch.testing.assert_close(fuse([local, (global_[0] * 0.003, global_[1] * 0.003)], **rule), expected)
    torch.testing.assert_close(fuse([(local[0] * 7.0, local[1] * 7.0), global_], **rule), expected)


def test_fusion_by_hand():
    local = (torch.tensor([2.0, 3.0]), torch.tensor([1.0, 3.0]))        # z = 0, 1
    global_ = (torch.tensor([10.0, 0.0]), torch.tensor([0.0, 10.0]))   # z = 1, -1; excess over 10 = 0, 0
    torch.testing.assert_close(fuse([local, global_], 0.0, "z", combine="sum"),
                               torch.tensor([1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(fuse([local, global_], 0.0, "z", combine="max"),
                               torch.tensor([1.0, 1.0], dtype=torch.float64))
    # excess: only the global 15 rises above the normal max 10, by 5 = one normal mean (5), weight 2
    far = (torch.tensor([15.0, 10.0]), torch.tensor([0.0, 10.0]))
    torch.testing.assert_close(fuse([local, far], 0.0, "excess", weight=2.0),
                               torch.tensor([2.0, 1.0], dtype=torch.float64))
    # the first channel counts both ways: a query below the normal scores stays below
    low = (torch.tensor([0.0]), torch.tensor([1.0, 3.0]))              # z = -2
    torch.testing.assert_close(fuse([low, (torch.tensor([0.0]), torch.tensor([0.0, 10.0]))], 0.0, "excess"),
                               torch.tensor([-2.0], dtype=torch.float64))


def test_at_k_1_fusion_returns_the_first_channel():
    local = (torch.tensor([0.2, 0.7]), torch.tensor([]))
    assert torch.equal(fuse([local, (torch.tensor([5.0, 1.0]), torch.tensor([]))]), local[0].double())


def test_fusion_rejects_bad_input():
    with pytest.raises(ValueError, match="combine"):
        fuse([(torch.zeros(2), torch.ones(2))], combine="mean")
    with pytest.raises(ValueError, match="others"):
        fuse([(torch.zeros(2), torch.ones(2))], others="rank")
    with pytest.raises(ValueError, match="weight"):
        fuse([(torch.zeros(2), torch.ones(2))], weight=-1.0)
    with pytest.raises(ValueError, match="same queries"):
        fuse([(torch.zeros(2), torch.ones(2)), (torch.zeros(3), torch.ones(2))])
    with pytest.raises(ValueError, match="at least 2"):
        calibrate(torch.zeros(2), torch.ones(1))
    with pytest.raises(ValueError, match="finite"):
        excess(torch.tensor([float("nan")]), torch.ones(2))
