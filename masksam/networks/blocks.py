# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Layers shared by the networks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ChannelsLastInstanceNorm3d", "PatchConvTranspose3d", "is_channels_last_3d"]


def is_channels_last_3d(x: torch.Tensor) -> bool:
    """True for a 5D tensor laid out channels-last (``torch.channels_last_3d``) and not also channels-first."""
    return x.ndim == 5 and x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()


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
        """As ``nn.ConvTranspose3d``; batched inputs of a patch-wise layer take the 1x1x1 form.

        A channels-last input gives a channels-last output (one matrix product over the voxels, then one
        copy that places the taps and adds the bias).
        """
        if output_size is not None or x.ndim != 5 or not self._is_patchwise():
            return super().forward(x, output_size)
        if is_channels_last_3d(x):
            return self._channels_last(x)
        cin, cout, kd, kh, kw = self.weight.shape
        taps = kd * kh * kw
        # (in, out, kd, kh, kw) -> (out*kd*kh*kw, in, 1, 1, 1): output channel o*taps + tap.
        weight = self.weight.permute(1, 2, 3, 4, 0).reshape(cout * taps, cin, 1, 1, 1)
        bias = self.bias.repeat_interleave(taps) if self.bias is not None else None
        y = F.conv3d(x, weight, bias)
        b, _, d, h, w = y.shape
        y = y.view(b, cout, kd, kh, kw, d, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
        return y.reshape(b, cout, d * kd, h * kh, w * kw)

    def _channels_last(self, x: torch.Tensor) -> torch.Tensor:
        cin, cout, kd, kh, kw = self.weight.shape
        b, _, d, h, w = x.shape
        voxels = x.permute(0, 2, 3, 4, 1).reshape(-1, cin)  # a view: channels are innermost
        # (N, in) @ (in, kd*kh*kw*out): row n holds the taps of voxel n, each tap's out channels together.
        y = voxels @ self.weight.permute(0, 2, 3, 4, 1).reshape(cin, -1)
        y = y.view(b, d, h, w, kd, kh, kw, cout).permute(0, 1, 4, 2, 5, 3, 6, 7)
        bias = self.bias.to(y.dtype) if self.bias is not None else None
        if bias is not None and not torch.is_grad_enabled():
            out = torch.add(y, bias, out=y.new_empty(y.shape))  # placement and bias in one pass
        else:
            out = y.contiguous()  # a copy into this order
            if bias is not None:
                out = out.add_(bias)
        return out.view(b, d * kd, h * kh, w * kw, cout).permute(0, 4, 1, 2, 3)


#: Voxels per chunk of the variance sums of :class:`ChannelsLastInstanceNorm3d` without autograd.
_VAR_CHUNK_VOXELS = 1 << 16


class ChannelsLastInstanceNorm3d(nn.InstanceNorm3d):
    """``nn.InstanceNorm3d`` that keeps a channels-last input channels-last.

    PyTorch's instance norm returns a channels-first tensor for a channels-last input, and on CPU takes
    about 2.6x its channels-first time to do so; the next convolution then also runs channels-first, which
    on CPU is about 1.4x slower than channels-last (``docs/performance.md``). For channels-last inputs
    this computes the statistics per sample and channel in two passes (mean, then the mean square of the
    centred values; float32 sums over millions of voxels stay within 1e-6 of a float64 reference) and
    returns a channels-last tensor; with running statistics or other inputs it is ``nn.InstanceNorm3d``.
    Parameters and buffers are those of ``nn.InstanceNorm3d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            not is_channels_last_3d(x)
            or self.track_running_stats
            or x.shape[1] != self.num_features
            or x.dtype not in (torch.float32, torch.float64)  # half types: the native kernel's float sums
        ):
            return super().forward(x)
        b, c = x.shape[:2]
        voxels = x.permute(0, 2, 3, 4, 1).reshape(b, -1, c)  # a view
        centred = voxels - voxels.mean(dim=1, keepdim=True)
        if torch.is_grad_enabled():
            var = centred.square().mean(dim=1, keepdim=True)
        else:  # without a full-size temporary: on CPU each new large tensor costs page faults
            var = sum(part.square().sum(dim=1, keepdim=True) for part in centred.split(_VAR_CHUNK_VOXELS, dim=1))
            var = var / voxels.shape[1]
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight
        if torch.is_grad_enabled():  # the square's backward needs ``centred`` as it is
            out = centred * scale
            out = out + self.bias if self.affine else out
        else:  # in place on this function's own temporary
            out = centred.mul_(scale)
            out = out.add_(self.bias) if self.affine else out
        return out.view(b, *x.shape[2:], c).permute(0, 4, 1, 2, 3)
