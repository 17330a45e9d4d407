# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Box helpers for the set criterion: boxes are ``(x1, y1, x2, y2)`` normalised to ``[0, 1]``.

``x`` runs along the width ``W`` (columns) and ``y`` along the height ``H`` (rows). A box covers whole
pixels, so a mask occupying columns ``c0..c1`` and rows ``r0..r1`` has the box
``(c0 / W, r0 / H, (c1 + 1) / W, (r1 + 1) / H)``; a one-pixel mask therefore has a positive area,
which keeps IoU and GIoU well defined for every non-empty target.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["masks_to_boxes_normalized"]


def masks_to_boxes_normalized(masks: Tensor) -> Tensor:
    """Tight normalised boxes of binary masks, vectorised over any leading dimensions (no loop over masks).

    Args:
        masks: ``(..., H, W)`` masks, bool or numeric (any non-zero value is foreground).

    Returns:
        ``(..., 4)`` float32 boxes ``(x1, y1, x2, y2)`` in ``[0, 1]`` with ``x`` along ``W`` and ``y`` along
        ``H``: ``(col_min / W, row_min / H, (col_max + 1) / W, (row_max + 1) / H)``. An empty mask gives
        ``(0, 0, 0, 0)``.

    Raises:
        ValueError: if ``masks`` has fewer than two dimensions.
    """
    if masks.ndim < 2:
        raise ValueError(f"masks must have shape (..., H, W), got shape {tuple(masks.shape)}.")
    *lead, height, width = masks.shape
    flat = masks.reshape(-1, height, width) != 0
    rows, cols = flat.any(dim=2), flat.any(dim=1)  # (N, H), (N, W): occupied rows and columns
    non_empty = rows.any(dim=1)

    def first(occupied: Tensor) -> Tensor:  # index of the first True (0 when none)
        return occupied.float().argmax(dim=1)

    def last(occupied: Tensor) -> Tensor:  # exclusive end: 1 + index of the last True
        return occupied.shape[1] - occupied.flip(1).float().argmax(dim=1)

    boxes = torch.stack([first(cols), first(rows), last(cols), last(rows)], dim=1).float()
    boxes = boxes * non_empty[:, None]
    scale = boxes.new_tensor([width, height, width, height])
    return (boxes / scale).reshape(*lead, 4)
