# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Layers shared by the networks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from masksam.backbones.checkpointing import TEMPORARY_ELEMENTS

__all__ = ["ChannelsLastInstanceNorm3d", "PatchConvTranspose3d", "is_channels_last_3d"]


def is_channels_last_3d(x: torch.Tensor) -> bool:
    """True for a 5D tensor laid out channels-last (``torch.channels_last_3d``) and not also channels-first."""
    return x.ndim == 5 and x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()


#: Largest matrix-product block (in elements) of :class:`PatchConvTranspose3d` on channels-last inputs
#: without autograd.
PATCH_CHUNK_ELEMENTS = TEMPORARY_ELEMENTS


class PatchConvTranspose3d(nn.ConvTranspose3d):
    """A transposed 3D convolution whose stride equals its kernel (non-overlapping patches: ``(1, 2, 2)``
    in-plane up-sampling), computed as a product to ``out * kd * kh * kw`` channels per voxel followed by
    a depth-to-space rearrangement: a 1x1x1 convolution for channels-first inputs, a matrix product over
    the voxels for channels-last ones (row blocks placed straight into the output without autograd).

    Each output voxel receives exactly one kernel tap, so the forms are the same sums; on CPU they run
    fast kernels instead of the transposed convolution (see docs/performance.md for the prompt
    generator's time before and after). Parameters, their names and shapes are those of
    ``nn.ConvTranspose3d``, so checkpoints are interchangeable.

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
        # (in, kd*kh*kw*out): a voxel's row of the product holds its taps, each tap's out channels together.
        weight = self.weight.permute(0, 2, 3, 4, 1).reshape(cin, -1)
        bias = self.bias
        planes = x.permute(0, 2, 3, 4, 1).reshape(b * d, h, w, cin)  # a view: channels are innermost
        if torch.is_grad_enabled():
            y = planes.reshape(-1, cin) @ weight
            placed = y.view(b * d, h, w, kd, kh, kw, cout).permute(0, 3, 1, 4, 2, 5, 6).contiguous()
            if bias is not None:
                placed = placed.add_(bias.to(placed.dtype))
        else:
            # Row blocks of each plane: the product's temporaries stay small (reused by the allocator),
            # and each block is placed, with the bias, straight into the output.
            rows = max(1, PATCH_CHUNK_ELEMENTS // (w * weight.shape[1]))
            placed = None
            for p in range(b * d):
                for r in range(0, h, rows):
                    y = planes[p, r : r + rows].reshape(-1, cin) @ weight
                    y = y.view(-1, w, kd, kh, kw, cout).permute(2, 0, 3, 1, 4, 5)  # (kd, rows, kh, w, kw, out)
                    if placed is None:
                        placed = x.new_empty((b * d, kd, h, kh, w, kw, cout), dtype=y.dtype)
                    target = placed[p, :, r : r + rows]
                    torch.add(y, bias.to(y.dtype), out=target) if bias is not None else target.copy_(y)
        return placed.view(b, d * kd, h * kh, w * kw, cout).permute(0, 4, 1, 2, 3)


#: Voxels per chunk of the variance sums of :class:`ChannelsLastInstanceNorm3d`.
_VAR_CHUNK_VOXELS = 1 << 16


class ChannelsLastInstanceNorm3d(nn.InstanceNorm3d):
    """``nn.InstanceNorm3d`` that, without autograd, keeps a channels-last input channels-last.

    PyTorch's instance norm returns a channels-first tensor for a channels-last input, and on CPU is slow
    to do so; the next convolution then also runs channels-first, which on CPU is slower than
    channels-last (``docs/performance.md``). Without autograd, for
    channels-last float inputs, this computes the statistics per sample and channel in two passes (mean,
    then sums of squares of the centred values chunk by chunk; float32 sums over millions of voxels stay
    within 1e-6 of a float64 reference) and returns a channels-last tensor. Under autograd, with running
    statistics or other inputs it is ``nn.InstanceNorm3d``: in training PyTorch's kernel keeps fewer
    full-size tensors alive than a composite would, which matters more there than the layout. Parameters
    and buffers are those of ``nn.InstanceNorm3d``.
    """

    def _own_path(self, x: torch.Tensor) -> bool:
        return (
            not torch.is_grad_enabled()
            and is_channels_last_3d(x)
            and not self.track_running_stats
            and x.shape[1] == self.num_features
            and x.dtype in (torch.float32, torch.float64)  # half types: the native kernel's float sums
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._normalize(x, inplace=False) if self._own_path(x) else super().forward(x)

    def forward_inplace(self, x: torch.Tensor) -> torch.Tensor:
        """Without autograd, normalise a channels-last ``x`` in place (for callers that own it); else ``self(x)``."""
        return self._normalize(x, inplace=True) if self._own_path(x) else self(x)

    def _normalize(self, x: torch.Tensor, inplace: bool) -> torch.Tensor:
        b, c = x.shape[:2]
        voxels = x.permute(0, 2, 3, 4, 1).reshape(b, -1, c)  # a view
        mean = voxels.mean(dim=1, keepdim=True)
        centred = voxels.sub_(mean) if inplace else voxels - mean
        # Sums of squares chunk by chunk: no full-size temporary (on CPU each one costs page faults).
        var = sum(part.square().sum(dim=1, keepdim=True) for part in centred.split(_VAR_CHUNK_VOXELS, dim=1))
        scale = torch.rsqrt(var / voxels.shape[1] + self.eps)
        if self.affine:
            scale = scale * self.weight
        out = centred.mul_(scale)  # in place on this function's own temporary (or on ``x``)
        out = out.add_(self.bias) if self.affine else out
        return out.view(b, *x.shape[2:], c).permute(0, 4, 1, 2, 3)
