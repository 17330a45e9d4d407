# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Prompt files of the prompted methods (clicks and boxes), validated against a JSON schema.

A prompt file is a JSON object, one per image::

    {
      "space": "voxel",                        # or "world": millimetres in the image's affine frame
      "points": [[120, 88, 31], [97, 80, 30]], # (x, y, z) = (i, j, k) in the image's array order
      "point_labels": [1, 0],                  # 1 foreground click, 0 background click
      "boxes": [[100, 70, 25, 140, 110, 40]],  # (x0, y0, z0, x1, y1, z1), corners included
      "label": 3                               # optional: the class the prompts point at
    }

At least one of ``points`` and ``boxes`` is given. A file may also hold a JSON array of such objects, one per
structure to segment in the image (:func:`read_prompt_file`). :func:`read_prompts` checks a file against
:data:`PROMPT_SCHEMA` (``jsonschema``) and then against the image: counts agree, box corners are
ordered, and every coordinate lies inside the image. Each failure raises :class:`PromptError` naming
the file and the JSON path of the offending value, e.g.
``/data/prompts/case_007.json: $.boxes[0]: corner (140, 70, 25) -> (100, 110, 40) has x1 < x0``.
JSON is parsed as data only (no pickle, no expressions).
"""

from __future__ import annotations

import json
import os
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = [
    "PROMPT_SCHEMA",
    "PromptError",
    "Prompts",
    "LoadPromptsd",
    "read_prompt_file",
    "read_prompts",
    "validate_prompts",
]

_NUMBER = {"type": "number"}

#: JSON schema (draft 2020-12) of a prompt file.
PROMPT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "MaskSAM prompt file",
    "type": "object",
    "properties": {
        "space": {"enum": ["voxel", "world"], "default": "voxel"},
        "points": {
            "type": "array",
            "minItems": 1,
            "items": {"type": "array", "items": _NUMBER, "minItems": 3, "maxItems": 3},
        },
        "point_labels": {"type": "array", "minItems": 1, "items": {"enum": [0, 1]}},
        "boxes": {
            "type": "array",
            "minItems": 1,
            "items": {"type": "array", "items": _NUMBER, "minItems": 6, "maxItems": 6},
        },
        "label": {"type": "integer", "minimum": 1},
    },
    "additionalProperties": False,
    "anyOf": [{"required": ["points"]}, {"required": ["boxes"]}],
    "dependentRequired": {"points": ["point_labels"], "point_labels": ["points"]},
}


class PromptError(ValueError):
    """A prompt file that cannot be used: unreadable, not matching :data:`PROMPT_SCHEMA`, or outside its image."""


@dataclass(frozen=True)
class Prompts:
    """Validated prompts in voxel coordinates of the image they were checked against.

    Attributes:
        points: ``(P, 3)`` float32 ``(x, y, z)`` voxel coordinates (``P`` may be 0).
        point_labels: ``(P,)`` int64, 1 foreground, 0 background.
        boxes: ``(B, 6)`` float32 ``(x0, y0, z0, x1, y1, z1)`` voxel coordinates (``B`` may be 0).
        label: the class the prompts point at, or ``None``.
    """

    points: torch.Tensor
    point_labels: torch.Tensor
    boxes: torch.Tensor
    label: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"points": self.points, "point_labels": self.point_labels, "boxes": self.boxes, "label": self.label}


def _where(source: str, path: str) -> str:
    return f"{source}: {path}"


def _to_voxel(coords: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World (mm) ``(N, 3)`` -> voxel ``(N, 3)`` through the inverse of a 4x4 affine."""
    homogeneous = np.concatenate([coords, np.ones((len(coords), 1))], axis=1)
    return (np.linalg.inv(affine) @ homogeneous.T).T[:, :3]


def validate_prompts(
    data: Any,
    spatial_shape: Sequence[int] | None = None,
    affine: np.ndarray | torch.Tensor | None = None,
    source: str = "prompts",
) -> Prompts:
    """Check parsed prompt JSON against :data:`PROMPT_SCHEMA` and the image; return voxel-space :class:`Prompts`.

    Args:
        data: the parsed JSON object.
        spatial_shape: the image's ``(H, W, D)``; coordinates must lie in ``[0, size - 1]`` (skipped if ``None``).
        affine: the image's 4x4 voxel-to-world affine; required when ``space`` is ``"world"``.
        source: the file name used in error messages.

    Raises:
        PromptError: naming ``source`` and the JSON path of the first offending value.
    """
    import jsonschema  # only prompted workflows need it

    validator = jsonschema.Draft202012Validator(PROMPT_SCHEMA)
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        raise PromptError(f"{_where(source, err.json_path)}: {err.message} (see masksam.transforms.PROMPT_SCHEMA)")
    points = np.asarray(data.get("points", []), dtype=np.float64).reshape(-1, 3)
    labels = np.asarray(data.get("point_labels", []), dtype=np.int64)
    boxes = np.asarray(data.get("boxes", []), dtype=np.float64).reshape(-1, 6)
    if len(labels) != len(points):
        raise PromptError(
            f"{_where(source, '$.point_labels')}: {len(labels)} labels for {len(points)} points (one label per point)"
        )
    for i, box in enumerate(boxes):  # corner order is checked as given, in the file's own frame
        bad = [axis for axis, lo, hi in zip("xyz", box[:3], box[3:], strict=True) if hi < lo]
        if bad:
            raise PromptError(
                f"{_where(source, f'$.boxes[{i}]')}: corner {tuple(box[:3].tolist())} -> {tuple(box[3:].tolist())} "
                f"has {', '.join(f'{a}1 < {a}0' for a in bad)}"
            )
    if data.get("space", "voxel") == "world":
        if affine is None:
            raise PromptError(f"{_where(source, '$.space')}: 'world' coordinates need the image's affine")
        affine = np.asarray(affine, dtype=np.float64)
        points = _to_voxel(points, affine)
        # All 8 corners of each world box: flipped, permuted or oblique axes give the enclosing voxel box.
        lo, hi = boxes[:, None, :3], boxes[:, None, 3:]
        pick = np.array([[(c >> a) & 1 for a in range(3)] for c in range(8)], dtype=bool)  # (8, 3)
        corners = np.where(pick[None], hi, lo).reshape(-1, 3)
        corners = _to_voxel(corners, affine).reshape(-1, 8, 3)
        boxes = np.concatenate([corners.min(1), corners.max(1)], axis=1)
    if spatial_shape is not None:
        upper = np.asarray(spatial_shape, dtype=np.float64) - 1
        tol = 1e-4  # world -> voxel round-off
        for name, coords in (("points", points), ("boxes", boxes.reshape(-1, 3))):
            outside = np.nonzero(((coords < -tol) | (coords > upper + tol)).any(axis=1))[0]
            if len(outside):
                j = int(outside[0])
                index = j if name == "points" else j // 2
                raise PromptError(
                    f"{_where(source, f'$.{name}[{index}]')}: voxel coordinate {tuple(np.round(coords[j], 3).tolist())} "
                    f"is outside the image of shape {tuple(int(s) for s in spatial_shape)}"
                )
    return Prompts(
        points=torch.as_tensor(points, dtype=torch.float32),
        point_labels=torch.as_tensor(labels),
        boxes=torch.as_tensor(boxes, dtype=torch.float32),
        label=data.get("label"),
    )


def _read_json(path: str) -> Any:
    if not os.path.isfile(path):
        raise PromptError(f"{path}: prompt file not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PromptError(f"{path}: not valid JSON ({e})") from e


def read_prompts(
    path: str | os.PathLike,
    spatial_shape: Sequence[int] | None = None,
    affine: np.ndarray | torch.Tensor | None = None,
) -> Prompts:
    """Read and validate a prompt file of one structure (see the module docstring); errors name ``path``."""
    path = os.fspath(path)
    return validate_prompts(_read_json(path), spatial_shape, affine, source=path)


def read_prompt_file(
    path: str | os.PathLike,
    spatial_shape: Sequence[int] | None = None,
    affine: np.ndarray | torch.Tensor | None = None,
) -> Prompts | list[Prompts]:
    """Read a prompt file of one structure (an object: :class:`Prompts`) or several (an array: a list of them).

    Raises:
        PromptError: naming the file and, for an array, the index of the offending structure (``path[2]: ...``).
    """
    path = os.fspath(path)
    data = _read_json(path)
    if not isinstance(data, list):
        return validate_prompts(data, spatial_shape, affine, source=path)
    if not data:
        raise PromptError(f"{path}: empty: the array holds no structure's prompts")
    return [validate_prompts(item, spatial_shape, affine, source=f"{path}[{i}]") for i, item in enumerate(data)]


class LoadPromptsd(MapTransform):
    """Replace a prompt-file path (or an inline prompt dict) under ``keys`` by validated voxel-space prompts.

    Runs after the image is loaded (``image_key``, a ``MetaTensor`` with channel first): coordinates are
    checked against its spatial shape, and ``"world"`` prompts are mapped through its affine. The
    prompts are in the loaded image's voxel grid; spatial transforms that follow must map them. A file (or inline
    value) with several structures gives a list of prompt dicts, which the prompt-space transforms map one by one.
    """

    def __init__(self, keys: KeysCollection, image_key: str = "image", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = d[self.image_key]
        affine = getattr(image, "affine", None)
        shape = image.shape[1:]
        for key in self.key_iterator(d):
            value = d[key]
            source = f"{getattr(image, 'meta', {}).get('filename_or_obj', self.image_key)} [{key}]"
            if isinstance(value, Mapping):  # prompts given inline in the datalist
                d[key] = validate_prompts(value, shape, affine, source=source).to_dict()
            elif isinstance(value, list):  # several structures inline
                d[key] = [
                    validate_prompts(v, shape, affine, source=f"{source}[{i}]").to_dict() for i, v in enumerate(value)
                ]
            else:
                loaded = read_prompt_file(value, spatial_shape=shape, affine=affine)
                d[key] = [p.to_dict() for p in loaded] if isinstance(loaded, list) else loaded.to_dict()
        return d
