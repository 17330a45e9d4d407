# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Adapter base class and the slice folding shared by every slice-aware module.

Convention: slices of a 3D patch are folded into the batch of the 2D SAM modules, ``N = B * D`` with
index ``n = b * D + d`` (slices consecutive). Adapters take channels-last tokens ``(N, ..., C)`` and
return a *delta* of the same leading shape that the caller adds; their last projection is
zero-initialised, so an untouched adapter leaves the frozen model's output exactly unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Adapter", "unfold_slices", "fold_slices", "check_num_slices"]


class Adapter(nn.Module):
    """Marker base class: every module that is trained while SAM stays frozen derives from it.

    :func:`masksam.adapters.mark_trainable` selects parameters by this type, never by name.
    """


def check_num_slices(n: int, num_slices: int) -> int:
    """Return the batch size ``B = n / num_slices``, raising ``ValueError`` if it does not divide."""
    if num_slices <= 0 or n % num_slices:
        raise ValueError(f"{n} folded slices are not a whole number of stacks of num_slices={num_slices}")
    return n // num_slices


def unfold_slices(x: torch.Tensor, num_slices: int) -> torch.Tensor:
    """``(B*D, h, w, C)`` channels-last tokens -> ``(B, C, D, h, w)`` for 3D convolution over the full grid."""
    if x.ndim != 4:
        raise ValueError(f"expected channels-last tokens (N, h, w, C), got shape {tuple(x.shape)}")
    n, h, w, c = x.shape
    b = check_num_slices(n, num_slices)
    return x.reshape(b, num_slices, h, w, c).permute(0, 4, 1, 2, 3)


def fold_slices(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`unfold_slices`: ``(B, C, D, h, w)`` -> ``(B*D, h, w, C)``."""
    if x.ndim != 5:
        raise ValueError(f"expected (B, C, D, h, w), got shape {tuple(x.shape)}")
    b, c, d, h, w = x.shape
    return x.permute(0, 2, 3, 4, 1).reshape(b * d, h, w, c)
