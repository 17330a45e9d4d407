# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import pytest
import torch

from masksam.losses import masks_to_boxes_normalized


def _reference_box(mask: torch.Tensor) -> list[float]:
    """Loop-free-of-tricks reference: scan rows and columns explicitly."""
    h, w = mask.shape
    rows = [r for r in range(h) if any(bool(mask[r, c]) for c in range(w))]
    cols = [c for c in range(w) if any(bool(mask[r, c]) for r in range(h))]
    if not rows:
        return [0.0, 0.0, 0.0, 0.0]
    return [min(cols) / w, min(rows) / h, (max(cols) + 1) / w, (max(rows) + 1) / h]


def test_hand_made_box_x_along_width() -> None:
    mask = torch.zeros(4, 5, dtype=torch.bool)  # H=4 rows, W=5 columns
    mask[1:3, 2:4] = True  # rows 1..2, columns 2..3
    box = masks_to_boxes_normalized(mask)
    assert box.shape == (4,)
    assert box.dtype == torch.float32
    torch.testing.assert_close(box, torch.tensor([2 / 5, 1 / 4, 4 / 5, 3 / 4]))


def test_single_pixel_and_full_mask() -> None:
    masks = torch.zeros(2, 3, 6)
    masks[0, 0, 0] = 1.0
    masks[1] = 1.0
    boxes = masks_to_boxes_normalized(masks)
    torch.testing.assert_close(boxes[0], torch.tensor([0.0, 0.0, 1 / 6, 1 / 3]))
    torch.testing.assert_close(boxes[1], torch.tensor([0.0, 0.0, 1.0, 1.0]))


def test_leading_dims_empty_masks_and_dtypes() -> None:
    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(2, 3, 7, 9, generator=gen) > 0.85
    masks[1, 2] = False  # one empty mask
    boxes = masks_to_boxes_normalized(masks)
    assert boxes.shape == (2, 3, 4)
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(boxes[i, j], torch.tensor(_reference_box(masks[i, j])))
    torch.testing.assert_close(boxes[1, 2], torch.zeros(4))
    torch.testing.assert_close(masks_to_boxes_normalized(masks.float()), boxes)
    assert masks_to_boxes_normalized(torch.zeros(0, 4, 4)).shape == (0, 4)


def test_rejects_bad_shape() -> None:
    with pytest.raises(ValueError, match=r"\(5,\)"):
        masks_to_boxes_normalized(torch.ones(5))
