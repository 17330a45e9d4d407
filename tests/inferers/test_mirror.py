# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import itertools

import pytest
import torch
from monai.inferers import SimpleInferer, SlidingWindowInferer

from masksam.inferers import MirroredInferer, SliceWindowInferer, mirror_combinations


def position_net(x: torch.Tensor) -> torch.Tensor:
    """Not mirror-equivariant: each output voxel sees the voxels before it along every axis."""
    return x.cumsum(2).cumsum(3).cumsum(4)


def test_every_non_empty_subset_of_the_axes() -> None:
    assert mirror_combinations([0, 1, 2]) == [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
    assert mirror_combinations([]) == []
    with pytest.raises(ValueError, match="mirror_axes"):
        mirror_combinations([0, 0])
    with pytest.raises(ValueError, match="mirror_axes"):
        mirror_combinations([-1])


def test_averages_the_eight_mirrored_predictions_mapped_back() -> None:
    x = torch.randn(2, 1, 5, 4, 3)
    expected = torch.zeros_like(x)
    for n in range(4):
        for axes in itertools.combinations((2, 3, 4), n):
            expected += torch.flip(position_net(torch.flip(x, axes)), axes) if axes else position_net(x)
    out = MirroredInferer(SimpleInferer())(x, position_net)
    torch.testing.assert_close(out, expected / 8)
    assert not torch.allclose(out, position_net(x)), "the test network must not be mirror-equivariant"


def test_network_sees_each_mirrored_copy_once() -> None:
    seen: list[torch.Tensor] = []

    def record(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        return x

    x = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 1, 2, 3, 4)
    out = MirroredInferer(SimpleInferer(), spatial_axes=(0, 2))(x, record)
    assert len(seen) == 4
    assert [torch.equal(s, torch.flip(x, d)) for s, d in zip(seen, ([], [2], [4], [2, 4]), strict=True)] == [True] * 4
    torch.testing.assert_close(out, x)  # an equivariant network's average is its plain output


def test_disabled_or_no_axes_is_the_inner_inferer() -> None:
    x = torch.randn(1, 1, 4, 4, 4)
    for tta in (MirroredInferer(SimpleInferer(), enabled=False), MirroredInferer(SimpleInferer(), spatial_axes=())):
        torch.testing.assert_close(tta(x, position_net), position_net(x))


def test_mirrors_each_sliding_window() -> None:
    """Inside MONAI's sliding window each window is mirrored on its own (nnU-Net's per-tile mirroring)."""
    x = torch.randn(1, 1, 8, 6, 4)
    inner = SlidingWindowInferer(roi_size=(4, 6, 4), sw_batch_size=1, overlap=0.0)
    out = MirroredInferer(inner)(x, position_net)
    halves = [MirroredInferer(SimpleInferer())(x[:, :, i : i + 4], position_net) for i in (0, 4)]
    torch.testing.assert_close(out, torch.cat(halves, dim=2))


def test_wraps_the_slice_window_inferer() -> None:
    x = torch.randn(1, 2, 6, 6, 5)  # two channels: the inferer's softmax over one would be constant
    inner = SliceWindowInferer(roi_size=(6, 6, 3), slice_stride=1)
    plain, mirrored = inner(x, position_net), MirroredInferer(inner, spatial_axes=(1,))(x, position_net)
    assert plain.shape == mirrored.shape and not torch.allclose(plain, mirrored)


def test_axes_beyond_the_input_name_the_setting() -> None:
    with pytest.raises(ValueError, match="mirror_axes"):
        MirroredInferer(SimpleInferer(), spatial_axes=(0, 3))(torch.zeros(1, 1, 4, 4, 4), position_net)
