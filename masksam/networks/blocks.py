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

    Calls this form does not cover (``output_size``, unbatched inputs, padding or groups set afterwards)
    run ``nn.ConvTranspose3d``'s own forward.

    Args:
        in_channels, out_channels: channels.
        kernel_size: the patch ``(kd, kh, kw)`` (also the stride).
        bias: learn an additive bias.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int, int], bias: bool = True
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=kernel_size, bias=bias)

    def _is_patchwise(self) -> bool:
        return (
            tuple(self.stride) == tuple(self.kernel_size)
            and tuple(self.padding) == (0, 0, 0)
            and tuple(self.output_padding) == (0, 0, 0)
            and tuple(self.dilation) == (1, 1, 1)
            and self.groups == 1
        )

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        """As ``nn.ConvTranspose3d``; batched inputs of a patch-wise layer take the 1x1x1 form."""
        if output_size is not None or x.ndim != 5 or not self._is_patchwise():
            return super().forward(x, output_size)
        cin, cout, kd, kh, kw = self.weight.shape
        taps = kd * kh * kw
        # (in, out, kd, kh, kw) -> (out*kd*kh*kw, in, 1, 1, 1): output channel o*taps + tap.
        weight = self.weight.permute(1, 2, 3, 4, 0).reshape(cout * taps, cin, 1, 1, 1)
        bias = self.bias.repeat_interleave(taps) if self.bias is not None else None
        y = F.conv3d(x, weight, bias)
        b, _, d, h, w = y.shape
        y = y.view(b, cout, kd, kh, kw, d, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
        y = y.reshape(b, cout, d * kd, h * kh, w * kw)
        if x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous():
            y = y.contiguous(memory_format=torch.channels_last_3d)  # keep a channels-last input's layout
        return y
