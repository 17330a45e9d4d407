# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Layers shared by the networks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PatchConvTranspose3d"]


class PatchConvTranspose3d(nn.ConvTranspose3d):
    """A transposed 3D convolution whose stride equals its kernel (non-overlapping patches: ``(1, 2, 2)``
    in-plane up-sampling), computed as a 1x1x1 convolution to ``out * kd * kh * kw`` channels followed by
    a depth-to-space rearrangement.

    Each output voxel receives exactly one kernel tap, so the two forms are the same sums; on CPU the
    rearranged form runs the fast 1x1x1 convolution kernel instead of the transposed one (see
    docs/performance.md for the prompt generator's time before and after). Parameters, their names and
    shapes are those of ``nn.ConvTranspose3d``, so checkpoints are interchangeable.

    Args:
        in_channels, out_channels: channels.
        kernel_size: the patch ``(kd, kh, kw)`` (also the stride).
        bias: learn an additive bias.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int, int], bias: bool = True
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=kernel_size, bias=bias)

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if output_size is not None:
            raise ValueError("PatchConvTranspose3d has one output size per input size; output_size is not accepted")
        if x.ndim != 5:
            raise ValueError(f"expected a (B, C, D, H, W) input, got shape {tuple(x.shape)}")
        cin, cout, kd, kh, kw = self.weight.shape
        taps = kd * kh * kw
        # (in, out, kd, kh, kw) -> (out*kd*kh*kw, in, 1, 1, 1): output channel o*taps + tap.
        weight = self.weight.permute(1, 2, 3, 4, 0).reshape(cout * taps, cin, 1, 1, 1)
        bias = self.bias.repeat_interleave(taps) if self.bias is not None else None
        y = F.conv3d(x, weight, bias)
        b, _, d, h, w = y.shape
        y = y.view(b, cout, kd, kh, kw, d, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
        return y.reshape(b, cout, d * kd, h * kh, w * kw)
