"""Similarity maps of NAGL and InCTRL on hand-made vectors."""
from __future__ import annotations

import pytest
import torch

from gadlib.kernels.similarity import (inctrl_patch_residual, nearest_normal_similarity, normal_abnormal_map,
                                       proxy_similarity)


def test_nearest_normal_similarity_known_answers():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    queries = torch.tensor([[2.0, 0.0], [-1.0, 0.0], [1.0, 1.0]])
    # Same direction as (1, 0) -> 1. (-1, 0) is opposite to (1, 0) but orthogonal to (0, 1), its nearest
    # reference -> cos 0 -> 0.5. (1, 1) is 45 degrees from both -> (1 + 1/sqrt(2)) / 2.
    expected = torch.tensor([1.0, 0.5, (1 + 2 ** -0.5) / 2])
    torch.testing.assert_close(nearest_normal_similarity(queries, bank), expected)


def test_inctrl_patch_residual_is_the_mean_over_layers():
    layer1 = (torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]]))       # identical: residual 0
    layer2 = (torch.tensor([[1.0, 0.0]]), torch.tensor([[-1.0, 0.0]]))      # opposite: (1 - (-1)) / 2 = 1
    out = inctrl_patch_residual([layer1[0], layer2[0]], [layer1[1], layer2[1]])
    torch.testing.assert_close(out, torch.tensor([0.5]))
    with pytest.raises(ValueError, match="one bank per layer"):
        inctrl_patch_residual([layer1[0]], [])


def test_proxy_similarity_and_combined_map():
    queries = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])                     # (1, 2, 2)
    proxies = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])                     # both proxies along x
    s_a = proxy_similarity(queries, proxies)
    torch.testing.assert_close(s_a, torch.tensor([[1.0, 0.5]]))
    s_n = torch.tensor([[0.2, 1.0]])
    torch.testing.assert_close(normal_abnormal_map(s_a, s_n), torch.tensor([[0.9, 0.25]]))
    with pytest.raises(ValueError, match="differ in shape"):
        normal_abnormal_map(s_a, s_n[:, :1])
