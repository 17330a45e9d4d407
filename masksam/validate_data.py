# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""``validate-data``: check every case of a datalist before training and print a report.

    python -m masksam.validate_data --datalist /data/amos22/dataset.json [--dataset_dir /data/amos22] \\
        [--num_classes 16] [--in_channels 1] [--keys training,validation,testing] [--output report.json]

One line per problem (``ERROR``/``WARNING``, datalist item, file, key, what is wrong), then a summary; the exit
status is 1 when there are errors. The checks are those of :class:`masksam.transforms.ValidateInputd` plus the
datalist-level ones (missing or malformed datalist, empty lists, items without an image or label, missing or
unreadable files). NIfTI headers are read first with nibabel, then each file's data once (for NaN/Inf and label
values); other formats go through MONAI's ``LoadImage``. ``validate_datalist`` is the function to call from code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from masksam.data.datalist import read_datalist
from masksam.transforms.checks import Problem, Volume, check_volumes

__all__ = ["validate_datalist", "format_report", "num_classes_from_datalist", "in_channels_from_datalist", "main"]

_DEFAULT_KEYS = ("training", "validation", "testing")
_LABELLED = ("training", "validation")  # lists whose items must have a label
_NIFTI = (".nii", ".nii.gz")


def num_classes_from_datalist(data: dict[str, Any]) -> int | None:
    """K (background included) from a datalist's ``labels`` field, or ``None`` when it has none.

    MSD style ``{"0": "background", "1": "liver"}`` and nnU-Net v2 style ``{"background": 0, "liver": 1}`` both
    give ``max(index) + 1``.
    """
    labels = data.get("labels")
    if not isinstance(labels, dict) or not labels:
        return None
    try:
        indices = [int(k) for k in labels]
    except ValueError:
        indices = [v for v in labels.values() if isinstance(v, int) and not isinstance(v, bool)]
        if len(indices) != len(labels):  # nnU-Net region labels (lists): no single class count
            return None
    return max(indices) + 1


def in_channels_from_datalist(data: dict[str, Any]) -> int | None:
    """Image channels from a datalist's ``modality`` (MSD) or ``channel_names`` (nnU-Net v2) field, if any."""
    for field in ("modality", "channel_names"):
        value = data.get(field)
        if isinstance(value, dict) and value:
            return len(value)
    return None


def _parse_keys(keys: str | Sequence[str] | None) -> tuple[tuple[str, ...], bool]:
    """The lists to check, and whether they were asked for explicitly (then each must exist)."""
    if keys is None:
        return _DEFAULT_KEYS, False
    if isinstance(keys, str):
        keys = keys.split(",")
    parsed = tuple(str(k).strip() for k in keys if str(k).strip())
    if not parsed:
        raise ValueError(f"keys names no datalist list: {keys!r}")
    return parsed, True


def _resolve(path: Any, base_dir: str) -> Any:
    if isinstance(path, str):
        return path if os.path.isabs(path) else os.path.join(base_dir, path)
    if isinstance(path, (list, tuple)):  # several files stacked as channels
        return [_resolve(p, base_dir) for p in path]
    return path


def _files(path: Any) -> list[str]:
    return [str(p) for p in path] if isinstance(path, list) else [str(path)]


def _read_volume(path: str | list[str]) -> Volume:
    """Header now, data on demand: NIfTI through nibabel, anything else (and file lists) through ``LoadImage``."""
    if isinstance(path, str) and path.lower().endswith(_NIFTI):
        import nibabel as nib

        img = nib.load(path)
        shape = tuple(int(s) for s in img.shape)
        # as MONAI's NibabelReader + ensure_channel_first: up to 3 dims are spatial, a further last one is channels
        shape = (1, *shape) if len(shape) <= 3 else (shape[-1], *shape[:-1])
        return Volume(path, shape, np.asarray(img.affine, dtype=np.float64), lambda: np.asanyarray(img.dataobj))
    from monai.transforms import LoadImage

    return Volume.from_loaded(LoadImage(image_only=True, ensure_channel_first=True)(path))


def _check_item(item: Any, where: str, labelled: bool, base_dir: str, check_kwargs: dict[str, Any]) -> list[Problem]:
    if not isinstance(item, dict):
        item = {"image": item}
    problems: list[Problem] = []
    volumes: dict[str, Volume] = {}
    for key in ("image", "label"):
        if key not in item:
            if key == "image" or labelled:
                problems.append(Problem("<datalist item>", key, f"item has no {key!r} (item: {item})", item=where))
            continue
        path = _resolve(item[key], base_dir)
        missing = [f for f in _files(path) if not os.path.isfile(f)]
        if missing:
            problems += [Problem(f, key, "file not found", item=where) for f in missing]
            continue
        try:
            volumes[key] = _read_volume(path)
        except Exception as exc:
            name = path if isinstance(path, str) else ", ".join(path)
            problems.append(Problem(name, key, f"cannot read the file: {type(exc).__name__}: {exc}", item=where))
    problems += [replace(p, item=where) for p in check_volumes(volumes, label_key="label", **check_kwargs)]
    return problems


def _validate(
    datalist: str | os.PathLike[str],
    dataset_dir: str | os.PathLike[str] | None,
    keys: str | Sequence[str] | None,
    progress: bool,
    check: dict[str, Any],
) -> tuple[list[Problem], int, dict[str, Any]]:
    """``validate_datalist`` plus the number of cases checked and the settings used, for the report.

    ``check`` holds ``validate_datalist``'s arguments for the volume checks (``num_classes``, ``in_channels``,
    ``spatial_dims``, ``check_finite``, ``max_anisotropy``, ``affine_atol``).
    """
    num_classes, in_channels = check["num_classes"], check["in_channels"]
    path = os.fspath(datalist)
    lists, explicit = _parse_keys(keys)
    try:
        data = read_datalist(path)
    except (OSError, ValueError) as exc:
        return [Problem(path, "datalist", str(exc))], 0, {}
    settings = {
        "num_classes": num_classes if num_classes is not None else num_classes_from_datalist(data),
        "in_channels": in_channels if in_channels is not None else in_channels_from_datalist(data),
    }
    base_dir = os.fspath(dataset_dir) if dataset_dir is not None else os.path.dirname(os.path.abspath(path))
    problems: list[Problem] = []
    cases: list[tuple[str, Any, bool]] = []
    for name in lists:
        if name not in data:
            if explicit or name == "training":
                problems.append(Problem(path, name, f"the datalist has no {name!r} list (it has: {sorted(data)})"))
            continue
        items = data[name]
        if not isinstance(items, list):
            problems.append(Problem(path, name, f"{name!r} must be a list of items, found {type(items).__name__}"))
        elif not items:
            # an empty 'validation' list replaces the folds and fails training: an error even when not asked for
            severity = "error" if explicit or name in _LABELLED else "warning"
            problems.append(Problem(path, name, f"the {name!r} list of the datalist is empty", severity=severity))
        else:
            cases += [(f"{name}[{i}]", item, name in _LABELLED) for i, item in enumerate(items)]
    check_kwargs = {**check, **settings}
    from monai.utils import optional_import

    tqdm, has_tqdm = optional_import("tqdm", name="tqdm")
    iterator = tqdm(cases, desc="validate-data", unit="case", disable=not progress) if has_tqdm else cases
    for where, item, labelled in iterator:
        problems += _check_item(item, where, labelled, base_dir, check_kwargs)
    return problems, len(cases), settings


def validate_datalist(
    datalist: str | os.PathLike[str],
    dataset_dir: str | os.PathLike[str] | None = None,
    num_classes: int | None = None,
    in_channels: int | None = None,
    keys: str | Sequence[str] | None = None,
    spatial_dims: int = 3,
    check_finite: bool = True,
    max_anisotropy: float | None = 10.0,
    affine_atol: float = 1e-3,
    progress: bool = True,
) -> list[Problem]:
    """Check every case of a datalist; return the problems found (errors and warnings), never raise on bad data.

    Args:
        datalist: the datalist JSON (MSD / Auto3DSeg format).
        dataset_dir: folder that relative paths are joined to; default: the datalist's folder.
        num_classes: K, background included; default: from the datalist's ``labels``, else values only ``>= 0``.
        in_channels: image channels; default: from ``modality``/``channel_names``, else not checked.
        keys: the lists to check, a comma-joined string or a sequence; each must then exist and be non-empty.
            Default: ``training`` (required), ``validation`` and ``testing`` (where present).
        spatial_dims: spatial dimensions of the bundle.
        check_finite: report NaN/Inf values.
        max_anisotropy: largest/smallest voxel spacing above which a warning is given; ``None``: no check.
        affine_atol: largest absolute difference allowed between image and label affines.
        progress: show a progress bar over cases (tqdm, on stderr).

    Returns:
        the problems; ``item`` says where each case sits (``training[3]``). Items of ``training`` and
        ``validation`` need a label; ``testing`` items are checked as images (and labels where given).
    """
    check = {"num_classes": num_classes, "in_channels": in_channels, "spatial_dims": spatial_dims,
             "check_finite": check_finite, "max_anisotropy": max_anisotropy, "affine_atol": affine_atol}  # fmt: skip
    return _validate(datalist, dataset_dir, keys, progress, check)[0]


def format_report(problems: Sequence[Problem], num_cases: int, datalist: str = "") -> str:
    """The printed report: one line per problem, then a summary line."""
    lines = [f"{p.severity.upper():7} {p.item + ' ' if p.item else ''}{p}" for p in problems]
    n_err = sum(p.severity == "error" for p in problems)
    n_warn = len(problems) - n_err
    source = f" of {datalist}" if datalist else ""
    summary = f"{n_err} error(s), {n_warn} warning(s)" if problems else "no problems"
    lines.append(f"validate-data: checked {num_cases} case(s){source}: {summary}")
    return "\n".join(lines)


def main(
    datalist: str,
    dataset_dir: str | None = None,
    num_classes: int | None = None,
    in_channels: int | None = None,
    keys: str | Sequence[str] | None = None,
    output: str | None = None,
    spatial_dims: int = 3,
    check_finite: bool = True,
    max_anisotropy: float | None = 10.0,
    affine_atol: float = 1e-3,
    progress: bool = True,
) -> None:
    """Validate a datalist, print the report, write it as JSON to ``output`` if given.

    Arguments are those of ``validate_datalist``. Returns normally when there is no error (warnings allowed);
    raises ``SystemExit(1)`` otherwise, so ``python -m masksam.validate_data`` and a bundle's ``validate_data``
    id both exit non-zero.
    """
    datalist, dataset_dir = str(datalist), None if dataset_dir is None else str(dataset_dir)
    if output is not None:
        output = str(output)
        if os.path.abspath(output) == os.path.abspath(datalist):
            raise ValueError(f"output {output!r} is the datalist itself: choose another report file")
    check = {"num_classes": num_classes, "in_channels": in_channels, "spatial_dims": spatial_dims,
             "check_finite": check_finite, "max_anisotropy": max_anisotropy, "affine_atol": affine_atol}  # fmt: skip
    problems, num_cases, settings = _validate(datalist, dataset_dir, keys, progress, check)
    print(format_report(problems, num_cases, datalist), flush=True)
    n_err = sum(p.severity == "error" for p in problems)
    if output is not None:
        report = {
            "datalist": os.path.abspath(datalist),
            "dataset_dir": dataset_dir,
            **settings,
            "num_cases": num_cases,
            "num_errors": n_err,
            "num_warnings": len(problems) - n_err,
            "problems": [p.to_dict() for p in problems],
        }
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        with open(output, "w") as f:
            json.dump(report, f, indent=2)
    if n_err:
        raise SystemExit(1)


if __name__ == "__main__":
    import fire

    fire.Fire(main)
