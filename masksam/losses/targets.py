# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Per-slice set-prediction targets built from an integer label map.

The slices of a 3D patch are folded into the batch: a MONAI label volume ``(B, 1, H, W, D)`` becomes
``N = B * D`` slices ``(N, H, W)`` with slice index ``n = b * D + d`` (see :func:`volume_to_slices`). In
every slice each label value present, background ``0`` included, becomes one target (MaskSAM recipe).
"""

from __future__ import annotations

import torch
from torch import Tensor

from masksam.losses.box_ops import masks_to_boxes_normalized

__all__ = ["slice_targets", "volume_to_slices"]


def _plain(t: Tensor) -> Tensor:
    """Drop tensor subclasses such as MONAI ``MetaTensor`` (metadata is meaningless per slice)."""
    return t.as_subclass(Tensor) if type(t) is not Tensor else t


def volume_to_slices(label: Tensor) -> Tensor:
    """Fold the depth axis of a MONAI channel-first label volume into the batch.

    Args:
        label: ``(B, 1, H, W, D)`` label volume (MONAI layout, depth last).

    Returns:
        ``(B * D, H, W)`` plain tensor (same dtype/device) where slice ``n = b * D + d`` is
        ``label[b, 0, :, :, d]``.

    Raises:
        ValueError: if ``label`` is not ``(B, 1, H, W, D)``.
    """
    if label.ndim != 5 or label.shape[1] != 1:
        raise ValueError(f"label must have shape (B, 1, H, W, D), got shape {tuple(label.shape)}.")
    b, _, h, w, d = label.shape
    return _plain(label)[:, 0].permute(0, 3, 1, 2).reshape(b * d, h, w)


def slice_targets(label: Tensor, num_classes: int, ignore_index: int | None = None) -> list[dict[str, Tensor]]:
    """Build the matching targets of every slice of an integer label map.

    Args:
        label: ``(N, H, W)`` or ``(N, 1, H, W)`` label map with values in ``[0, num_classes)``; an integer
            dtype, or a floating dtype holding whole numbers (MONAI loaders often give float labels).
        num_classes: number of classes ``K`` including background ``0``.
        ignore_index: optional label value that produces no target. Its pixels are excluded from
            the value check and are ``0`` in every target mask.

    Returns:
        A list of ``N`` dicts, one per slice, with ``M`` = number of distinct (non-ignored) values in
        the slice:

        - ``labels``: ``(M,)`` int64 class ids in increasing order,
        - ``masks``: ``(M, H, W)`` float32 binary masks,
        - ``boxes``: ``(M, 4)`` float32 normalised tight boxes ``(x1, y1, x2, y2)``, ``x`` along ``W``,
          ``y`` along ``H``: ``(col_min / W, row_min / H, (col_max + 1) / W, (row_max + 1) / H)``.

        All tensors are on the device of ``label``.

    Raises:
        ValueError: on a bad shape, ``num_classes < 1``, non-integral values, or values outside
            ``[0, num_classes)`` (the message lists them).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    label = _plain(label)
    if label.ndim == 4 and label.shape[1] == 1:
        label = label[:, 0]
    if label.ndim != 3:
        raise ValueError(f"label must have shape (N, H, W) or (N, 1, H, W), got shape {tuple(label.shape)}.")
    if label.dtype == torch.bool or label.is_complex():
        raise ValueError(f"label must be an integer or real tensor, got dtype {label.dtype}.")
    if label.is_floating_point():
        if not bool(torch.all(label == label.round())):
            bad = torch.unique(label[label != label.round()])[:10]
            raise ValueError(f"label must hold whole numbers, got values {bad.tolist()}.")
        label = label.long()
    else:
        label = label.long()

    valid = torch.ones_like(label, dtype=torch.bool) if ignore_index is None else label != ignore_index
    out_of_range = valid & ((label < 0) | (label >= num_classes))
    if bool(out_of_range.any()):
        bad_values = torch.unique(label[out_of_range]).tolist()
        raise ValueError(f"label values {bad_values} are outside [0, {num_classes}) (num_classes={num_classes}).")

    classes = torch.arange(num_classes, device=label.device)
    one_hot = (label[:, None] == classes[None, :, None, None]) & valid[:, None]  # (N, K, H, W)
    present = one_hot.flatten(2).any(dim=2)  # (N, K)
    boxes = masks_to_boxes_normalized(one_hot)  # (N, K, 4)

    targets: list[dict[str, Tensor]] = []
    for n in range(label.shape[0]):
        ids = present[n].nonzero().squeeze(1)
        targets.append(
            {
                "labels": ids.to(torch.int64),
                "masks": one_hot[n, ids].to(torch.float32),
                "boxes": boxes[n, ids],
            }
        )
    return targets
