# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Datalists in the MSD / Auto3DSeg JSON format: training/validation splits by fold, inference inputs."""

from __future__ import annotations

import glob
import json
import os
from typing import Any

__all__ = ["read_datalist", "split_items", "inference_items", "prompted_items", "prompt_path"]

_IMAGE_PATTERNS = ("*.nii.gz", "*.nii", "*.nrrd", "*.mha", "*.mhd")


def read_datalist(datalist: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a datalist JSON file, with clear errors for a missing or malformed file."""
    path = os.fspath(datalist)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"datalist file not found: {path!r}")
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"datalist {path!r} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"datalist {path!r} must hold a JSON object with a 'training' list")
    return data


def _resolve(items: list[dict[str, Any]], base_dir: str, keys: tuple[str, ...]) -> list[dict[str, Any]]:
    out = []
    for item in items:
        if not isinstance(item, dict):
            item = {"image": item}
        item = dict(item)
        for key in keys:
            if key in item and isinstance(item[key], str) and not os.path.isabs(item[key]):
                item[key] = os.path.join(base_dir, item[key])
        out.append(item)
    return out


def _check(items: list[dict[str, Any]], what: str, path: str, keys: tuple[str, ...]) -> list[dict[str, Any]]:
    if not items:
        raise ValueError(f"{what} list of datalist {path!r} is empty")
    missing = [item[k] for item in items for k in keys if k in item and not os.path.exists(item[k])]
    if missing:
        raise FileNotFoundError(f"{len(missing)} files named in {path!r} do not exist, e.g. {missing[:3]}")
    absent = [i for i, item in enumerate(items) if any(k not in item for k in keys)]
    if absent:
        raise ValueError(f"{what} items {absent[:5]} of {path!r} lack one of the keys {list(keys)}")
    return items


def split_items(
    datalist: str | os.PathLike[str],
    base_dir: str | None = None,
    fold: int = 0,
    key: str = "training",
    validation_list: bool = True,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(training items, validation items)`` of validation ``fold``, as ``monai.auto3dseg.datafold_read``.

    Items carrying ``fold == fold`` validate and the others train. When the datalist has its own
    ``validation`` list and ``validation_list`` is true, that list validates and every ``key`` item trains
    (with ``validation_list=False`` the folds decide, as in Auto3DSeg's cross-validation). Relative paths are
    joined to ``base_dir`` (default: the datalist's folder).

    Raises:
        FileNotFoundError: a listed file is missing.
        ValueError: no validation item (no ``validation`` list and no item of ``fold``), or an empty list.
    """
    path = os.fspath(datalist)
    data = read_datalist(datalist)
    base = base_dir if base_dir is not None else os.path.dirname(os.path.abspath(path))
    items = _resolve(list(data.get(key, [])), base, ("image", "label"))
    if validation_list and "validation" in data:
        train = items
        val = _check(
            _resolve(list(data["validation"]), base, ("image", "label")), "validation", path, ("image", "label")
        )
    else:
        train = [i for i in items if i.get("fold") != fold] if any("fold" in i for i in items) else items
        val = [i for i in items if i.get("fold") == fold]
        if not val:
            raise ValueError(f"datalist {path!r} has no 'validation' list and no {key} item of fold {fold}")
        val = _check(val, f"fold-{fold} validation", path, ("image", "label"))
    return _check(train, key, path, ("image", "label")), val


def inference_items(
    dataset_dir: str | os.PathLike[str], datalist: str | os.PathLike[str] | None = None, key: str = "testing"
) -> list[dict[str, Any]]:
    """Images to segment: the ``testing`` list of ``datalist`` when given, else every image file in ``dataset_dir``."""
    dataset_dir = os.fspath(dataset_dir)
    if datalist:
        data = read_datalist(datalist)
        if key not in data:
            raise ValueError(f"datalist {os.fspath(datalist)!r} has no {key!r} list (keys: {sorted(data)})")
        items = _resolve(list(data[key]), dataset_dir, ("image",))
        return _check(items, key, os.fspath(datalist), ("image",))
    if not os.path.isdir(dataset_dir):
        raise FileNotFoundError(f"dataset_dir is not a folder: {dataset_dir!r}")
    files = sorted({f for p in _IMAGE_PATTERNS for f in glob.glob(os.path.join(dataset_dir, p))})
    if not files:
        raise ValueError(f"no images ({', '.join(_IMAGE_PATTERNS)}) found in {dataset_dir!r}")
    return [{"image": f} for f in files]


def prompt_path(image: str | os.PathLike[str], suffix: str = ".json") -> str:
    """The prompt file beside an image: its name without the image extension, plus ``suffix``
    (``/data/case_007.nii.gz`` -> ``/data/case_007.json``)."""
    image = os.fspath(image)
    for ext in sorted((p[1:] for p in _IMAGE_PATTERNS), key=len, reverse=True):
        if image.endswith(ext):
            return image[: -len(ext)] + suffix
    return os.path.splitext(image)[0] + suffix


def prompted_items(
    dataset_dir: str | os.PathLike[str],
    datalist: str | os.PathLike[str] | None = None,
    key: str = "testing",
    suffix: str = ".json",
) -> list[dict[str, Any]]:
    """Images to segment with their prompts: :func:`inference_items`, each with a ``prompts`` entry.

    An item of the datalist may name its prompt file (``"prompts": "case_007.json"``, relative to ``dataset_dir``) or
    hold the prompts inline; otherwise the file beside the image is used (:func:`prompt_path`).

    Raises:
        FileNotFoundError: naming every image whose prompt file is missing (up to 5) and the file looked for.
    """
    items = []
    for item in inference_items(dataset_dir, datalist, key):
        prompts = item.get("prompts", prompt_path(item["image"], suffix))
        if isinstance(prompts, str) and not os.path.isabs(prompts):
            prompts = os.path.join(os.fspath(dataset_dir), prompts)
        items.append({**item, "prompts": prompts})
    missing = [
        (i["image"], i["prompts"]) for i in items if isinstance(i["prompts"], str) and not os.path.isfile(i["prompts"])
    ]
    if missing:
        listed = "; ".join(f"{image} -> {path}" for image, path in missing[:5])
        raise FileNotFoundError(
            f"{len(missing)} of {len(items)} images have no prompt file (a JSON file beside the image, or a 'prompts' "
            f"entry in the datalist): {listed}"
        )
    return items
