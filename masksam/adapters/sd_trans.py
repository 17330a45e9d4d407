# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Med-SA's Space-Depth Transpose: the block's frozen attention applied along the slice axis."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from masksam.adapters.base import Adapter, check_num_slices
from masksam.adapters.bottleneck import BottleneckAdapter

__all__ = ["SpaceDepthTranspose", "depth_grid"]


def depth_grid(num_slices: int) -> tuple[int, int]:
    """Most nearly square factorisation ``(a, b)``, ``a <= b``, ``a * b = num_slices`` (4 -> 2x2; 7 -> 1x7)."""
    if num_slices <= 0:
        raise ValueError(f"num_slices must be positive, got {num_slices}")
    a = max(d for d in range(1, math.isqrt(num_slices) + 1) if num_slices % d == 0)
    return a, num_slices // a


class SpaceDepthTranspose(Adapter):
    """Depth branch of a Med-SA block: every token position attends across the D slices of its stack.

    Tokens ``(B*D, h, w, C)`` are transposed to ``(B*h*w, D, C)``, the D axis is laid out as a near-square
    grid so that the same frozen attention (its relative-position tables interpolated) applies, and a
    bottleneck adapter (zero-init) maps the result to a delta. It runs on the full, un-windowed grid.

    Args:
        dim: token width C.
        hidden_dim: width of the depth adapter (Med-SA: C/4).
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.adapter = BottleneckAdapter(dim, hidden_dim)

    def forward(self, x: torch.Tensor, attend: Callable[[torch.Tensor], torch.Tensor], num_slices: int) -> torch.Tensor:
        """``x (B*D, h, w, C)`` (the block's normalised input) -> delta ``(B*D, h, w, C)``.

        ``attend`` is the block's frozen attention on channels-last ``(N, a, b, C)`` grids.
        """
        n, h, w, c = x.shape
        b = check_num_slices(n, num_slices)
        a, g = depth_grid(num_slices)
        seq = x.reshape(b, num_slices, h, w, c).permute(0, 2, 3, 1, 4).reshape(b * h * w, a, g, c)
        out = self.adapter(attend(seq))
        return out.reshape(b, h, w, num_slices, c).permute(0, 3, 1, 2, 4).reshape(n, h, w, c)
