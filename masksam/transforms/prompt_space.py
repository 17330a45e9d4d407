# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Prompts from the loaded image's voxel grid to model space, and to the per-slice tensors the prompted networks take.

A prompted pipeline (Med-SA, SAM-UNet) runs::

    LoadImaged -> EnsureChannelFirstd -> LoadPromptsd -> PromptsToWorldd
    -> Orientationd("RAS") -> Spacingd (optional) -> Resized(S, size_mode="longest") -> SpatialPadd((S, S, -1))
    -> PromptsToVoxeld -> SlicePromptsd

:class:`PromptsToWorldd` stores the prompts in world coordinates (millimetres, through the loaded image's affine)
while the image is still on its loaded grid; the spatial transforms then change the image and its ``affine``, and
:class:`PromptsToVoxeld` maps the world coordinates through the inverse of the image's *current* affine: no
resampling maths of our own, only MONAI's :func:`~monai.transforms.utils.apply_affine_to_points`. A box is carried as
its 8 world corners and becomes the voxel box enclosing them (flips and axis permutations reorder its corners).

:func:`slice_prompts` turns voxel-space prompts of a ``(C, H, W, D)`` image into SAM's per-slice encoding:

- ``prompt_coords``: float32 ``(D, P, 2)``, ``(i, j)`` voxel coordinates on slice ``d`` (array dims 0 and 1);
- ``prompt_labels``: int64 ``(D, P)``: 1 foreground click, 0 background click, 2 box corner ``(i0, j0)``,
  3 box corner ``(i1, j1)``, -1 padding.

``P = num_points + 2``: slots ``0 .. num_points - 1`` hold the slice's clicks (then padding), the last two slots its
box (or padding). A slice whose labels are all -1 has no prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from functools import partial
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.transforms.utils import apply_affine_to_points

from masksam.transforms.prompts import PromptError

__all__ = [
    "BOX_SLOTS",
    "PromptsToVoxeld",
    "PromptsToWorldd",
    "SlicePromptsd",
    "box_corners",
    "empty_slice_prompts",
    "slice_prompts",
]

#: Prompt slots a per-slice box takes (its two corners, labels 2 and 3), after the click slots.
BOX_SLOTS = 2


def box_corners(boxes: torch.Tensor) -> torch.Tensor:
    """All 8 corners of axis-aligned boxes: ``(M, 6)`` ``(x0, y0, z0, x1, y1, z1)`` -> ``(M, 8, 3)``."""
    pick = torch.tensor([[(c >> a) & 1 for a in range(3)] for c in range(8)], dtype=torch.bool)  # (8, 3)
    return torch.where(pick[None], boxes[:, None, 3:], boxes[:, None, :3])


def _map(coords: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
    """``(..., 3)`` coordinates through a 4x4 affine (MONAI's point mapping, float64 inside), float32 out."""
    flat = coords.reshape(1, -1, 3).to(torch.float64)
    return apply_affine_to_points(flat, torch.as_tensor(affine, dtype=torch.float64)).reshape(coords.shape).float()


def _image_and_source(d: Mapping[Hashable, Any], image_key: str, key: Hashable) -> tuple[Any, str]:
    image = d[image_key]
    meta = getattr(image, "meta", {})
    return image, f"{meta.get('filename_or_obj', image_key)} [{key}]"


def _each(value: Any, source: str, fn: Callable[[Any, str], Any]) -> Any:
    """``fn(prompts, source)`` on one structure's prompt dict, or on each of a list of them (one per structure)."""
    if isinstance(value, list):
        return [fn(v, f"{source}[{i}]") for i, v in enumerate(value)]
    return fn(value, source)


class PromptsToWorldd(MapTransform):
    """Voxel prompts of :class:`~masksam.transforms.LoadPromptsd` -> world coordinates through the image's affine.

    Runs right after :class:`~masksam.transforms.LoadPromptsd`, before any spatial transform. The value under each key
    becomes ``{"space": "world", "points": (N, 3), "point_labels": (N,), "box_corners": (M, 8, 3), "label": ...}``
    (float32 millimetres). :class:`PromptsToVoxeld` maps it back to the image's voxel grid after the spatial
    transforms.

    Args:
        keys: keys of the prompt dicts.
        image_key: the loaded, channel-first image (a ``MetaTensor`` with its ``affine``).
        allow_missing_keys: don't raise if a key is absent.
    """

    def __init__(self, keys: KeysCollection, image_key: str = "image", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image, source = _image_and_source(d, self.image_key, key)
            d[key] = _each(d[key], source, partial(self._to_world, image=image, key=key))
        return d

    def _to_world(self, prompts: Any, source: str, image: Any, key: Hashable) -> dict[str, Any]:
        if not isinstance(prompts, Mapping) or prompts.get("space", "voxel") != "voxel" or "boxes" not in prompts:
            raise PromptError(f"{source}: PromptsToWorldd expects the voxel prompts of LoadPromptsd under {key!r}")
        affine = getattr(image, "affine", None)
        if affine is None:
            raise PromptError(f"{source}: the image under {self.image_key!r} has no affine (load it as a MetaTensor)")
        return {
            "space": "world",
            "points": _map(torch.as_tensor(prompts["points"]), affine),
            "point_labels": torch.as_tensor(prompts["point_labels"]),
            "box_corners": _map(box_corners(torch.as_tensor(prompts["boxes"])), affine),
            "label": prompts.get("label"),
        }


class PromptsToVoxeld(MapTransform):
    """World prompts of :class:`PromptsToWorldd` -> voxel prompts of the image's *current* grid (model space).

    Runs after the spatial transforms. Output: ``{"points": (N, 3), "point_labels": (N,), "boxes": (M, 6),
    "label": ...}`` in the current image's voxel coordinates, boxes the enclosure of their mapped corners.
    A coordinate must lie on the image, i.e. within the voxels' extent ``[-0.5, size - 0.5]`` per axis (a prompt on
    the loaded image's edge voxel may map half a voxel outward after resizing); it is then clamped to
    ``[0, size - 1]``. One farther out (e.g. cropped away) raises :class:`~masksam.transforms.PromptError` naming the
    image file, the key and the prompt.

    Args:
        keys: keys of the world prompt dicts.
        image_key: the transformed image (a ``MetaTensor``, channel first).
        allow_missing_keys: don't raise if a key is absent.
    """

    def __init__(self, keys: KeysCollection, image_key: str = "image", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image, source = _image_and_source(d, self.image_key, key)
            d[key] = _each(d[key], source, partial(self._to_voxel, image=image, key=key))
        return d

    @staticmethod
    def _to_voxel(prompts: Any, source: str, image: Any, key: Hashable) -> dict[str, Any]:
        if not isinstance(prompts, Mapping) or prompts.get("space") != "world":
            raise PromptError(f"{source}: PromptsToVoxeld expects the world prompts of PromptsToWorldd under {key!r}")
        inverse = torch.linalg.inv(torch.as_tensor(image.affine, dtype=torch.float64))
        shape = torch.tensor(image.shape[1:], dtype=torch.float32)
        points = _map(prompts["points"], inverse)
        corners = _map(prompts["box_corners"], inverse)
        for name, coords in (("points", points), ("boxes", corners.reshape(-1, 3))):
            outside = torch.nonzero(((coords < -0.5) | (coords > shape - 0.5)).any(dim=1)).flatten()
            if len(outside):
                j = int(outside[0])
                raise PromptError(
                    f"{source}: {name}[{j if name == 'points' else j // 8}] maps to voxel "
                    f"{tuple(round(float(c), 2) for c in coords[j])}, outside the transformed image of shape "
                    f"{tuple(int(s) for s in shape)} (cropped away? check the spatial transforms)"
                )
        upper = shape - 1
        return {
            "points": torch.minimum(points.clamp(min=0), upper),
            "point_labels": prompts["point_labels"],
            "boxes": torch.cat([corners.amin(1), corners.amax(1)], dim=1).clamp(min=0).minimum(upper.repeat(2)),
            "label": prompts.get("label"),
        }


def empty_slice_prompts(depth: int, num_points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-slice prompt tensors with no prompt: coords ``(depth, num_points + 2, 2)`` zeros, labels all -1."""
    size = num_points + BOX_SLOTS
    return torch.zeros(depth, size, 2), torch.full((depth, size), -1, dtype=torch.int64)


def slice_prompts(
    points: torch.Tensor,
    point_labels: torch.Tensor,
    boxes: torch.Tensor,
    depth: int,
    num_points: int,
    source: str = "prompts",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Voxel-space prompts of a ``(C, H, W, D)`` image -> per-slice ``prompt_coords``, ``prompt_labels``.

    A point ``(x, y, z)`` goes to slice ``round(z)`` at ``(i, j) = (x, y)``; a box ``(x0, y0, z0, x1, y1, z1)``
    becomes the box ``(x0, y0) - (x1, y1)`` on every slice ``round(z0) <= d <= round(z1)`` (a 3D box covers its
    slices, a 2D box has ``z0 == z1``). Rounding is half up.

    Args:
        points: ``(N, 3)`` voxel coordinates; point_labels: ``(N,)`` 1 foreground, 0 background.
        boxes: ``(M, 6)`` voxel boxes.
        depth: the image's ``D``.
        num_points: click slots per slice (``P = num_points + 2``).
        source: the name used in error messages (the image file and key).

    Returns:
        ``prompt_coords`` float32 ``(D, P, 2)`` and ``prompt_labels`` int64 ``(D, P)`` (see the module docstring).

    Raises:
        PromptError: no prompt at all ("empty"), points or boxes of the wrong shape, point labels other than 0 and
            1, a prompt on a slice outside ``[0, D - 1]``, more than
            ``num_points`` clicks on one slice, or two boxes on one slice.
    """
    if num_points < 0:
        raise ValueError(f"num_points must be >= 0, got {num_points}")
    points, boxes = torch.as_tensor(points, dtype=torch.float32), torch.as_tensor(boxes, dtype=torch.float32)
    point_labels = torch.as_tensor(point_labels, dtype=torch.int64)
    for name, value, width in (("points", points, 3), ("boxes", boxes, 6)):
        if value.numel() and (value.ndim != 2 or value.shape[1] != width):
            raise PromptError(f"{source}: {name} must be ({name[0].upper()}, {width}), got shape {tuple(value.shape)}")
    points, boxes, point_labels = points.reshape(-1, 3), boxes.reshape(-1, 6), point_labels.reshape(-1)
    if not torch.isin(point_labels, torch.tensor([0, 1])).all():
        raise PromptError(
            f"{source}: point labels must be 1 (foreground) or 0 (background), got {point_labels.tolist()}"
        )
    if len(points) == 0 and len(boxes) == 0:
        raise PromptError(f"{source}: empty: no point and no box to prompt with")
    if len(point_labels) != len(points):
        raise PromptError(f"{source}: {len(point_labels)} point labels for {len(points)} points")
    coords, labels = empty_slice_prompts(depth, num_points)
    point_slices = torch.floor(points[:, 2] + 0.5).long()
    for n, d in enumerate(point_slices.tolist()):
        if not 0 <= d < depth:
            raise PromptError(f"{source}: points[{n}] is on slice {d}, outside the image's {depth} slices")
        used = int((labels[d, :num_points] >= 0).sum())
        if used == num_points:
            raise PromptError(
                f"{source}: slice {d} has more than num_points={num_points} clicks (points[{n}]); raise num_points"
            )
        coords[d, used] = points[n, :2]
        labels[d, used] = point_labels[n]
    box_slices = torch.floor(boxes[:, [2, 5]] + 0.5).long()
    owner = torch.full((depth,), -1, dtype=torch.int64)
    for m, (d0, d1) in enumerate(box_slices.tolist()):
        if d0 < 0 or d1 >= depth:
            raise PromptError(f"{source}: boxes[{m}] spans slices {d0}..{d1}, outside the image's {depth} slices")
        clash = torch.nonzero(owner[d0 : d1 + 1] >= 0).flatten()
        if len(clash):
            d = d0 + int(clash[0])
            raise PromptError(
                f"{source}: boxes[{int(owner[d])}] and boxes[{m}] are both on slice {d} (one box a slice)"
            )
        owner[d0 : d1 + 1] = m
        coords[d0 : d1 + 1, num_points] = boxes[m, :2]
        coords[d0 : d1 + 1, num_points + 1] = boxes[m, 3:5]
        labels[d0 : d1 + 1, num_points:] = torch.tensor([2, 3])
    return coords, labels


class SlicePromptsd(MapTransform):
    """Voxel prompts of :class:`PromptsToVoxeld` under ``keys`` -> ``prompt_coords``, ``prompt_labels`` (model input).

    See :func:`slice_prompts`. The prompt dict is removed (its variable-length tensors don't collate) unless
    ``keep_source`` is set.

    Args:
        keys: the key of the voxel prompt dict (one key).
        image_key: the model-space image ``(C, H, W, D)``; ``D`` is its last dim.
        num_points: click slots per slice; ``P = num_points + 2``.
        coords_key: output key of the ``(D, P, 2)`` coordinates.
        labels_key: output key of the ``(D, P)`` labels.
        keep_source: keep the prompt dict under its key.
        structures_key: output key of the list of each structure's ``label`` (its 1-based index where the file gives
            none): the value its label map carries.

    A list of prompt dicts (a file with several structures) gives ``(M, D, P, 2)`` coordinates and ``(M, D, P)``
    labels, structure ``m`` first.
    """

    def __init__(
        self,
        keys: KeysCollection,
        image_key: str = "image",
        num_points: int = 3,
        coords_key: str = "prompt_coords",
        labels_key: str = "prompt_labels",
        keep_source: bool = False,
        structures_key: str = "prompt_structures",
    ) -> None:
        super().__init__(keys)
        if len(self.keys) != 1:
            raise ValueError(f"SlicePromptsd takes one prompt key, got {self.keys}")
        if num_points < 0:
            raise ValueError(f"num_points must be >= 0, got {num_points}")
        self.image_key, self.num_points = image_key, num_points
        self.coords_key, self.labels_key, self.keep_source = coords_key, labels_key, keep_source
        self.structures_key = structures_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        key = self.keys[0]
        image, source = _image_and_source(d, self.image_key, key)
        prompts = d[key] if self.keep_source else d.pop(key)
        per_structure = _each(prompts, source, partial(self._slices, depth=image.shape[-1], key=key))
        if isinstance(per_structure, list):  # several structures: (M, D, P, 2) and (M, D, P)
            d[self.coords_key] = torch.stack([c for c, _ in per_structure])
            d[self.labels_key] = torch.stack([lab for _, lab in per_structure])
            values = [p.get("label") or m + 1 for m, p in enumerate(prompts)]
            twice = sorted({v for v in values if values.count(v) > 1})
            if twice:
                raise PromptError(
                    f"{source}: structures {[m for m, v in enumerate(values) if v in twice]} would all be written as "
                    f"label {twice[0]} (a structure without a 'label' takes its position, from 1): give each its own"
                )
            d[self.structures_key] = values
        else:
            d[self.coords_key], d[self.labels_key] = per_structure
            d[self.structures_key] = [prompts.get("label") or 1]
        return d

    def _slices(self, prompts: Any, source: str, depth: int, key: Hashable) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(prompts, Mapping) or "boxes" not in prompts or prompts.get("space", "voxel") != "voxel":
            raise PromptError(f"{source}: SlicePromptsd expects voxel prompts (PromptsToVoxeld) under {key!r}")
        return slice_prompts(
            prompts["points"], prompts["point_labels"], prompts["boxes"], depth, self.num_points, source
        )
