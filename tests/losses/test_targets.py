# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import pytest
import torch

from masksam.losses import slice_targets, volume_to_slices


def _hand_label() -> torch.Tensor:
    label = torch.zeros(2, 4, 6, dtype=torch.int64)  # N=2, H=4, W=6
    label[0, 1:3, 3:5] = 2  # rows 1..2, columns 3..4
    label[0, 3, 0] = 3  # one pixel, bottom-left
    return label  # slice 1 is background only


def test_hand_made_targets() -> None:
    targets = slice_targets(_hand_label(), num_classes=4)
    assert len(targets) == 2
    first, second = targets
    assert first["labels"].tolist() == [0, 2, 3]
    assert first["labels"].dtype == torch.int64
    assert first["masks"].dtype == torch.float32 and first["boxes"].dtype == torch.float32
    assert first["masks"].shape == (3, 4, 6) and first["boxes"].shape == (3, 4)
    label = _hand_label()[0]
    for k, value in enumerate([0, 2, 3]):
        torch.testing.assert_close(first["masks"][k], (label == value).float())
    expected_boxes = torch.tensor(
        [
            [0.0, 0.0, 1.0, 1.0],  # background spans the whole slice
            [3 / 6, 1 / 4, 5 / 6, 3 / 4],  # x along W (columns 3..4), y along H (rows 1..2)
            [0.0, 3 / 4, 1 / 6, 1.0],
        ]
    )
    torch.testing.assert_close(first["boxes"], expected_boxes)
    assert second["labels"].tolist() == [0]
    torch.testing.assert_close(second["masks"], torch.ones(1, 4, 6))
    torch.testing.assert_close(second["boxes"], torch.tensor([[0.0, 0.0, 1.0, 1.0]]))


def test_channel_dim_and_float_labels_are_accepted() -> None:
    label = _hand_label()
    reference = slice_targets(label, num_classes=4)
    for variant in (label[:, None], label.float(), label.to(torch.uint8)):
        for ref, got in zip(reference, slice_targets(variant, num_classes=4), strict=True):
            for key in ("labels", "masks", "boxes"):
                torch.testing.assert_close(got[key], ref[key])


def test_random_labels_match_per_class_reference() -> None:
    gen = torch.Generator().manual_seed(3)
    label = torch.randint(0, 5, (3, 9, 7), generator=gen)
    label[1] = torch.where(label[1] == 4, 0, label[1])  # class 4 absent in slice 1
    for n, target in enumerate(slice_targets(label, num_classes=6)):
        present = torch.unique(label[n]).tolist()
        assert target["labels"].tolist() == present
        for k, value in enumerate(present):
            mask = label[n] == value
            torch.testing.assert_close(target["masks"][k], mask.float())
            rows, cols = mask.nonzero(as_tuple=True)
            box = [cols.min() / 7, rows.min() / 9, (cols.max() + 1) / 7, (rows.max() + 1) / 9]
            torch.testing.assert_close(target["boxes"][k], torch.tensor([float(b) for b in box]))


def test_out_of_range_values_raise_with_values() -> None:
    label = _hand_label()
    label[0, 0, 0] = 7
    label[1, 0, 0] = -1
    with pytest.raises(ValueError, match=r"\[-1, 7\]"):
        slice_targets(label, num_classes=4)
    with pytest.raises(ValueError, match="2.5"):
        slice_targets(torch.full((1, 2, 2), 2.5), num_classes=4)
    with pytest.raises(ValueError, match="num_classes"):
        slice_targets(_hand_label(), num_classes=0)
    with pytest.raises(ValueError, match=r"\(4, 6\)"):
        slice_targets(torch.zeros(4, 6, dtype=torch.int64), num_classes=2)


def test_ignore_index_produces_no_target() -> None:
    label = _hand_label()
    label[0, 0, :] = 255
    target = slice_targets(label, num_classes=4, ignore_index=255)[0]
    assert target["labels"].tolist() == [0, 2, 3]
    assert float(target["masks"][:, 0, :].sum()) == 0.0
    torch.testing.assert_close(target["boxes"][0], torch.tensor([0.0, 1 / 4, 1.0, 1.0]))  # row 0 ignored
    with pytest.raises(ValueError, match="255"):
        slice_targets(label, num_classes=4)


def test_volume_to_slices_order() -> None:
    b, h, w, d = 2, 3, 4, 5
    values = (10 * torch.arange(b)[:, None] + torch.arange(d)[None, :]).float()  # value = 10 * b + d
    volume = values[:, None, None, None, :].expand(b, 1, h, w, d).contiguous()
    volume[1, 0, 2, 3, 4] = -1.0  # marks position (h=2, w=3) of slice n = 1 * D + 4
    slices = volume_to_slices(volume)
    assert slices.shape == (b * d, h, w)
    for n in range(b * d):
        expected = torch.full((h, w), float(10 * (n // d) + n % d))
        if n == 1 * d + 4:
            expected[2, 3] = -1.0
        torch.testing.assert_close(slices[n], expected)
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 5\)"):
        volume_to_slices(torch.zeros(2, 3, 4, 5))
