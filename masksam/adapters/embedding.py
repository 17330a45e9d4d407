# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Learnable per-slice ("temporal") embeddings, zero-initialised."""

from __future__ import annotations

import torch
from torch import nn

from masksam.adapters.base import Adapter, check_num_slices

__all__ = ["SliceEmbedding", "SliceDenseEmbedding"]


class SliceEmbedding(Adapter):
    """Adds a learnable vector per slice position to every token of that slice (MaskSAM's temporal embedding).

    Args:
        num_slices: slices per stack D (fixed: stored with the model and checked at run time).
        dim: token width C.
    """

    def __init__(self, num_slices: int, dim: int) -> None:
        super().__init__()
        if num_slices <= 0 or dim <= 0:
            raise ValueError(f"num_slices and dim must be positive, got {num_slices} and {dim}")
        self.num_slices = num_slices
        self.embedding = nn.Parameter(torch.zeros(num_slices, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B*D, ..., C)`` channels-last -> ``x`` plus the embedding of each token's slice."""
        b = check_num_slices(x.shape[0], self.num_slices)
        view = (1, self.num_slices) + (1,) * (x.ndim - 2) + (x.shape[-1],)
        return (x.reshape(b, self.num_slices, *x.shape[1:]) + self.embedding.reshape(view)).reshape(x.shape)


class SliceDenseEmbedding(Adapter):
    """A learnable map per slice position ``(D, C, h, w)`` added to a channels-first dense positional encoding.

    MaskSAM adds it to the prompt encoder's image positional encoding. ``forward(pe, batch)`` maps a
    shared ``(1, C, h, w)`` encoding to ``(batch*D, C, h, w)``.
    """

    def __init__(self, num_slices: int, channels: int, size: tuple[int, int]) -> None:
        super().__init__()
        if num_slices <= 0 or channels <= 0:
            raise ValueError(f"num_slices and channels must be positive, got {num_slices} and {channels}")
        self.num_slices = num_slices
        self.embedding = nn.Parameter(torch.zeros(num_slices, channels, *size))

    def forward(self, pe: torch.Tensor, batch: int) -> torch.Tensor:
        return (pe + self.embedding).repeat(batch, 1, 1, 1)
