# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""MaskSAM's 3D depth-convolution adapter (DConvAdapter), on the full, un-windowed token grid."""

from __future__ import annotations

import torch
from torch import nn

from masksam.adapters.base import Adapter, fold_slices, unfold_slices

__all__ = ["DepthConvAdapter3D"]


class DepthConvAdapter3D(Adapter):
    """Linear C->c, GELU, depthwise Conv3d k^3 over (slice, h, w), channel LayerNorm, GELU, inner skip, Linear c->C.

    The convolution runs on ``(B, c, D, h, w)``: every output token sees its neighbours on adjacent
    slices. (The research code ran it after window partitioning, which mixed windows instead of slices.)

    Args:
        dim: token width C.
        hidden_dim: bottleneck width c (MaskSAM: C/4).
        kernel_size: depthwise kernel size (odd).
    """

    def __init__(self, dim: int, hidden_dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        if dim <= 0 or hidden_dim <= 0:
            raise ValueError(f"dim and hidden_dim must be positive, got {dim} and {hidden_dim}")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.down = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.conv = nn.Conv3d(hidden_dim, hidden_dim, kernel_size, padding=kernel_size // 2, groups=hidden_dim)
        self.norm = nn.LayerNorm(hidden_dim)  # channel LayerNorm, applied channels-last after the conv
        self.up = nn.Linear(hidden_dim, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor, num_slices: int) -> torch.Tensor:
        """``x (B*D, h, w, C)`` channels-last, slices consecutive -> delta ``(B*D, h, w, C)``."""
        hidden = self.act(self.down(x))
        mixed = fold_slices(self.conv(unfold_slices(hidden, num_slices)))
        return self.up(hidden + self.act(self.norm(mixed)))
