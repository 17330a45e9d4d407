# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""MA-SAM's 3D adapter: LayerNorm, Linear down, Conv3d over slices only, GELU, Linear up."""

from __future__ import annotations

import torch
from torch import nn

from masksam.adapters.base import Adapter, fold_slices, unfold_slices

__all__ = ["SliceConvAdapter3D"]


class SliceConvAdapter3D(Adapter):
    """``delta = W_up(GELU(Conv3d_{k x 1 x 1}(W_down(LN(x)))))`` on the full token grid.

    Inserted before attention and before the MLP of every block (MA-SAM). Bias-free linears, conv with
    bias, 'same' padding along the slice axis only.

    Args:
        dim: token width C.
        hidden_dim: bottleneck width (MA-SAM: 384 for every backbone).
        kernel_size: extent along the slice axis (odd; MA-SAM: 3).
    """

    def __init__(self, dim: int, hidden_dim: int = 384, kernel_size: int = 3) -> None:
        super().__init__()
        if dim <= 0 or hidden_dim <= 0:
            raise ValueError(f"dim and hidden_dim must be positive, got {dim} and {hidden_dim}")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, hidden_dim, bias=False)
        self.conv = nn.Conv3d(hidden_dim, hidden_dim, (kernel_size, 1, 1), padding=(kernel_size // 2, 0, 0))
        self.act = nn.GELU()
        self.up = nn.Linear(hidden_dim, dim, bias=False)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor, num_slices: int) -> torch.Tensor:
        """``x (B*D, h, w, C)`` channels-last -> delta ``(B*D, h, w, C)``."""
        hidden = self.down(self.norm(x))
        return self.up(self.act(fold_slices(self.conv(unfold_slices(hidden, num_slices)))))
