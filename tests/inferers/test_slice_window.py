# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor
from torch import nn

from masksam.inferers import SliceWindowInferer

T = 5


class SliceMixer(nn.Module):
    """A fake stack network whose logits at a slice depend on its neighbours and on its position in the window."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(1, num_classes, (1, 1, 3), padding=(0, 0, 1))
        self.position = nn.Parameter(torch.randn(1, num_classes, 1, 1, T))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-1] == T
        self.calls += x.shape[0]
        return self.conv(x) + self.position


def window_reference(net: nn.Module, volume: torch.Tensor, starts: list[int]) -> torch.Tensor:
    """Direct computation: each window starts at a slice of the edge-replicated volume; average its softmax."""
    d = volume.shape[-1]
    index = torch.arange(-(T // 2), d + T // 2).clamp(0, d - 1)
    padded = volume[..., index]
    total = torch.zeros(volume.shape[0], 3, *volume.shape[2:4], d + 2 * (T // 2))
    count = torch.zeros(d + 2 * (T // 2))
    for s in starts:
        total[..., s : s + T] += net(padded[..., s : s + T]).softmax(1)
        count[s : s + T] += 1
    return (total / count)[..., T // 2 : T // 2 + d]


@pytest.mark.parametrize("depth", [1, 3, 9, 12])
def test_stride_one_averages_the_windows_centred_on_every_slice(depth: int) -> None:
    net = SliceMixer()
    volume = torch.randn(2, 1, 6, 7, depth)
    with torch.no_grad():
        out = SliceWindowInferer((6, 7, T), slice_stride=1)(volume, net)
        expected = window_reference(net, volume, list(range(depth)))
    assert out.shape == (2, 3, 6, 7, depth)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out.sum(1), torch.ones(2, 6, 7, depth))


@pytest.mark.parametrize("depth", [5, 9, 12])
def test_stride_t_places_each_slice_in_one_window_with_the_last_aligned_to_the_end(depth: int) -> None:
    net = SliceMixer()
    volume = torch.randn(1, 1, 6, 6, depth)
    padded_depth = depth + 2 * (T // 2)
    starts = list(range(0, padded_depth - T + 1, T))
    if starts[-1] != padded_depth - T:
        starts.append(padded_depth - T)
    with torch.no_grad():
        out = SliceWindowInferer((6, 6, T), slice_stride=T)(volume, net)
        assert net.calls == len(starts)
        expected = window_reference(net, volume, starts)
    torch.testing.assert_close(out, expected)


def test_stride_one_costs_t_times_the_windows_of_stride_t() -> None:
    volume = torch.randn(1, 1, 6, 6, 20)
    counts = {}
    for stride in (1, T):
        net = SliceMixer()
        with torch.no_grad():
            SliceWindowInferer((6, 6, T), slice_stride=stride)(volume, net)
        counts[stride] = net.calls
    assert counts == {1: 20, T: 5}


def test_in_plane_windows_and_metadata() -> None:
    net = SliceMixer()
    affine = torch.diag(torch.tensor([0.7, 0.7, 2.0, 1.0]))
    volume = MetaTensor(torch.randn(1, 1, 20, 13, 7), affine=affine)
    with torch.no_grad():
        out = SliceWindowInferer((8, 8, T), slice_stride=1, overlap=0.5, mode="gaussian")(volume, net)
    assert isinstance(out, MetaTensor)
    assert out.shape == (1, 3, 20, 13, 7)
    torch.testing.assert_close(out.affine, volume.affine)
    torch.testing.assert_close(out.as_tensor().sum(1), torch.ones(1, 20, 13, 7))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"roi_size": (8, 8), "slice_stride": 1}, "roi_size"),
        ({"roi_size": (8, 8, 5), "slice_stride": 6}, "slice_stride"),
        ({"roi_size": (8, 8, 5), "slice_stride": 0}, "slice_stride"),
        ({"roi_size": (8, 8, 5), "overlap": 1.0}, "overlap"),
    ],
)
def test_bad_settings_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SliceWindowInferer(**kwargs)
