# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Plain bottleneck adapter (Med-SA's Space/MLP adapter): Linear down, activation, Linear up."""

from __future__ import annotations

import torch
from torch import nn

from masksam.adapters.base import Adapter

__all__ = ["BottleneckAdapter"]


class BottleneckAdapter(Adapter):
    """``delta = W_up(act(W_down(x)))``, per token; ``W_up`` zero-initialised.

    Args:
        dim: token width C.
        hidden_dim: bottleneck width (Med-SA: C/4).
        act: activation class (Med-SA's code uses GELU; its paper says ReLU).
    """

    def __init__(self, dim: int, hidden_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        if dim <= 0 or hidden_dim <= 0:
            raise ValueError(f"dim and hidden_dim must be positive, got {dim} and {hidden_dim}")
        self.down = nn.Linear(dim, hidden_dim)
        self.act = act()
        self.up = nn.Linear(hidden_dim, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor, num_slices: int = 1) -> torch.Tensor:
        """``x (N, ..., C)`` channels-last -> delta of the same shape (``num_slices`` unused)."""
        return self.up(self.act(self.down(x)))
