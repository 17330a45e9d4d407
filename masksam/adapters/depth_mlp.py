# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""MaskSAM's 3D depth-MLP adapter (DMLPAdapter) for token sequences of stacked slices."""

from __future__ import annotations

import torch
from torch import nn

from masksam.adapters.base import Adapter, check_num_slices

__all__ = ["DepthMLPAdapter3D"]


class DepthMLPAdapter3D(Adapter):
    """Linear C->c, GELU; an MLP over the slice axis (D -> ratio*D -> D) added; Linear c->C.

    The slice MLP mixes the same token (or query) across the ``num_slices`` slices of a stack, which is
    how the frozen 2D decoder learns about the third dimension. Its weights depend on D, so the slice
    count is fixed at construction and checked at run time.

    Args:
        dim: token width C.
        hidden_dim: bottleneck width c (MaskSAM: 64 for C=256).
        num_slices: slices per stack D.
        depth_ratio: hidden expansion of the slice MLP (MaskSAM: 4).
    """

    def __init__(self, dim: int, hidden_dim: int, num_slices: int, depth_ratio: int = 4) -> None:
        super().__init__()
        if min(dim, hidden_dim, num_slices, depth_ratio) <= 0:
            raise ValueError(
                f"dim, hidden_dim, num_slices and depth_ratio must be positive, got {dim}, {hidden_dim}, "
                f"{num_slices}, {depth_ratio}"
            )
        self.num_slices = num_slices
        self.down = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.slice_mlp = nn.Sequential(
            nn.Linear(num_slices, depth_ratio * num_slices), nn.GELU(), nn.Linear(depth_ratio * num_slices, num_slices)
        )
        self.up = nn.Linear(hidden_dim, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor, num_slices: int) -> torch.Tensor:
        """``x (B*D, ..., C)`` with slices consecutive in the first axis -> delta of the same shape."""
        if num_slices != self.num_slices:
            raise ValueError(f"this adapter was built for {self.num_slices} slices per stack, got {num_slices}")
        b = check_num_slices(x.shape[0], num_slices)
        hidden = self.act(self.down(x))
        stacked = hidden.reshape(b, num_slices, -1).transpose(1, 2)  # (B, rest*c, D)
        mixed = self.slice_mlp(stacked).transpose(1, 2).reshape(hidden.shape)
        return self.up(hidden + mixed)
