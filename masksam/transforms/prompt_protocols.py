# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Named evaluation prompt protocols of the prompted methods, deterministic per case.

:data:`PROMPT_PROTOCOLS` maps a protocol name to a function ``(mask, rng, num_points) -> (coords, labels)`` giving
the per-slice encoding of :mod:`masksam.transforms.prompt_space` (``(D, P, 2)`` ``(i, j)`` float32, ``(D, P)``
int64, ``P = num_points + 2``) for a ``(H, W, D)`` structure mask; slices without the structure get no prompt:

- ``"1 click"``, ``"3 clicks"``: on every slice showing the structure, 1 or 3 distinct positive clicks on uniformly
  random structure voxels (fewer where the slice has fewer voxels), as Med-SA's research code evaluates.
- ``"box"``: the slice's tight box (SAM-UNet's evaluation).
- ``"box, jitter 0.5"``, ``"box, jitter 0.75"``: the tight box shifted so that its IoU with the tight box is 0.5 /
  0.75 (Med-SA's "BBox 0.5/0.75"), made as follows. Boxes are compared as voxel extents: a box with corners
  ``(i0, j0), (i1, j1)`` covers ``[i0, i1 + 1) x [j0, j1 + 1)``, sides ``h = i1 - i0 + 1``, ``w = j1 - j0 + 1``.
  A copy of the tight box shifted by ``(di, dj)`` with ``|di| < h``, ``|dj| < w`` overlaps it by
  ``(h - |di|)(w - |dj|)``, so IoU ``t`` needs the overlap fraction ``r = 2t / (1 + t)`` of the box area.
  With ``u ~ U(0, 1)``: ``1 - |di| / h = r ** u`` and ``1 - |dj| / w = r ** (1 - u)``; each shift's sign is drawn
  among the directions in which the shifted box stays on the slice. The shift is fractional (SAM takes float
  coordinates) and the IoU exact, unless the structure is so wide that neither direction fits: then the shift
  goes the roomier way and the box is clamped to the slice (its IoU is then higher than promised).

:class:`PromptProtocold` applies a named protocol to a label and records the protocol's name under
``protocol_key`` so evaluation can write it into its CSV. Its random state is seeded from ``seed``, the label's
file name and the class, so a case gets the same prompts in every run and in any order.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Hashable, Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from masksam.transforms.prompt_simulation import pack_slice_prompts, random_voxels, tight_boxes

__all__ = ["PROMPT_PROTOCOLS", "PromptProtocold", "box_prompts", "click_prompts", "shifted_boxes"]

ProtocolFn = Callable[[torch.Tensor, np.random.RandomState, int | None], tuple[torch.Tensor, torch.Tensor]]


def shifted_boxes(boxes: torch.Tensor, shape: tuple[int, int], iou: float, rng: np.random.RandomState) -> torch.Tensor:
    """Boxes shifted to a given IoU with themselves (see the module docstring for the construction).

    Args:
        boxes: ``(D, 4)`` ``(i0, j0, i1, j1)`` tight boxes.
        shape: the slice's ``(H, W)``.
        iou: the IoU in ``(0, 1]``.
        rng: the random state.

    Returns:
        ``(D, 4)`` float32 shifted boxes.
    """
    if not 0 < iou <= 1:
        raise ValueError(f"iou must be in (0, 1], got {iou}")
    depth = len(boxes)
    sides = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], dim=1) + 1  # (D, 2)
    u = torch.as_tensor(rng.random_sample(depth), dtype=torch.float32)
    keep = (2 * iou / (1 + iou)) ** torch.stack([u, 1 - u], dim=1)  # per-axis overlap fraction
    size = (1 - keep) * sides  # |shift| per axis
    room_low = boxes[:, :2]
    room_high = torch.tensor(shape, dtype=torch.float32) - 1 - boxes[:, 2:]
    fits_low, fits_high = room_low >= size, room_high >= size
    coin = torch.as_tensor(rng.random_sample((depth, 2)) < 0.5)
    up = torch.where(fits_low & fits_high, coin, torch.where(fits_low | fits_high, fits_high, room_high > room_low))
    shift = torch.where(up, size, -size)
    moved = boxes + shift.repeat(1, 2)
    upper = torch.tensor([shape[0] - 1, shape[1] - 1] * 2, dtype=torch.float32)
    return torch.minimum(moved.clamp(min=0), upper)


def click_prompts(
    mask: torch.Tensor, rng: np.random.RandomState, num_points: int | None = None, *, num_clicks: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_clicks`` random positive clicks on every slice showing the structure; ``num_points`` >= num_clicks."""
    num_points = num_clicks if num_points is None else num_points
    coords, valid = random_voxels(mask, num_clicks, rng)
    return pack_slice_prompts(coords, torch.where(valid, 1, -1), None, None, num_points)


def box_prompts(
    mask: torch.Tensor, rng: np.random.RandomState, num_points: int | None = None, *, iou: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tight box (``iou=1``) or a box shifted to IoU ``iou`` with it on every slice showing the structure."""
    boxes, present = tight_boxes(mask)
    if iou < 1:
        height, width = mask.shape[-3:-1]
        boxes = shifted_boxes(boxes, (int(height), int(width)), iou, rng)
    depth = len(boxes)
    none = torch.zeros(depth, 0, 2), torch.zeros(depth, 0, dtype=torch.int64)
    return pack_slice_prompts(*none, boxes, present, 0 if num_points is None else num_points)


#: Evaluation prompt protocols by name (see the module docstring).
PROMPT_PROTOCOLS: dict[str, ProtocolFn] = {
    "1 click": partial(click_prompts, num_clicks=1),
    "3 clicks": partial(click_prompts, num_clicks=3),
    "box": partial(box_prompts, iou=1.0),
    "box, jitter 0.5": partial(box_prompts, iou=0.5),
    "box, jitter 0.75": partial(box_prompts, iou=0.75),
}


class PromptProtocold(MapTransform):
    """Apply a named protocol of :data:`PROMPT_PROTOCOLS` to one or several structures of a label (evaluation).

    The structure is ``label == class_value`` (or ``label > 0`` for ``class_value=None``); its float32
    ``(1, H, W, D)`` mask goes to ``target_key``, the per-slice prompts to ``coords_key``/``labels_key``, the
    protocol's name to ``protocol_key``. A structure absent from the label gives an all-zero target and no prompt.
    With a sequence of ``M`` class values, every structure is prompted: targets ``(M, H, W, D)``, prompts
    ``(M, D, P, 2)`` and ``(M, D, P)`` (what :class:`masksam.inferers.PromptedInferer` takes for several structures).

    Args:
        keys: the label key, ``(1, H, W, D)``.
        protocol: a name in :data:`PROMPT_PROTOCOLS`.
        class_value: the class to prompt for, a sequence of classes, or ``None`` for a binary label.
        seed: the base seed; each case's random state is seeded from it, the label's ``filename_or_obj`` and the class.
        num_points: click slots (``P = num_points + 2``); default the protocol's click count.
        target_key, coords_key, labels_key, protocol_key: output keys (``target_key=None``: the masks are not kept;
            evaluation scores against the label itself).
    """

    def __init__(
        self,
        keys: KeysCollection = "label",
        protocol: str = "1 click",
        class_value: int | Sequence[int] | None = None,
        seed: int = 0,
        num_points: int | None = None,
        target_key: str | None = "target",
        coords_key: str = "prompt_coords",
        labels_key: str = "prompt_labels",
        protocol_key: str = "prompt_protocol",
    ) -> None:
        super().__init__(keys)
        if len(self.keys) != 1:
            raise ValueError(f"PromptProtocold takes one label key, got {self.keys}")
        if protocol not in PROMPT_PROTOCOLS:
            raise ValueError(f"unknown prompt protocol {protocol!r}; choose one of {sorted(PROMPT_PROTOCOLS)}")
        values = list(class_value) if isinstance(class_value, Sequence) else [class_value]
        if not values or any(v is not None and v < 1 for v in values) or (None in values and len(values) > 1):
            raise ValueError(
                f"class_value must be >= 1 (or a non-empty list of such, or None for a binary label), got {class_value}"
            )
        self.protocol, self.class_value, self.seed, self.num_points = protocol, class_value, seed, num_points
        self.target_key, self.coords_key, self.labels_key = target_key, coords_key, labels_key
        self.protocol_key = protocol_key

    def case_rng(self, label: Any, class_value: int | None = None) -> np.random.RandomState:
        """The case's random state: from ``seed``, the label's file name and the class."""
        name = str(getattr(label, "meta", {}).get("filename_or_obj", ""))
        value = self.class_value if class_value is None else class_value
        return np.random.RandomState((self.seed + zlib.crc32(f"{name}:{value}".encode())) % 2**32)

    def _one(self, label: Any, class_value: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mask = label > 0 if class_value is None else label == class_value
        coords, labels = PROMPT_PROTOCOLS[self.protocol](mask[0], self.case_rng(label, class_value), self.num_points)
        return mask.float(), coords, labels

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        key = self.keys[0]
        label = d[key]
        if label.ndim != 4 or label.shape[0] != 1:
            raise ValueError(f"PromptProtocold: {key!r} must be (1, H, W, D), got shape {tuple(label.shape)}")
        if isinstance(self.class_value, Sequence):
            parts = [self._one(label, int(v)) for v in self.class_value]
            target = torch.cat([t for t, _, _ in parts])
            coords, labels = torch.stack([c for _, c, _ in parts]), torch.stack([lab for _, _, lab in parts])
        else:
            target, coords, labels = self._one(label, self.class_value)
        if self.target_key is not None:
            d[self.target_key] = target
        d[self.coords_key], d[self.labels_key], d[self.protocol_key] = coords, labels, self.protocol
        return d
