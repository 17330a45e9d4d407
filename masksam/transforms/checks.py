# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""The input checks behind ``ValidateInputd`` and ``validate-data``: problems that name the file, key and value.

``check_volumes`` takes the loaded files of one case (``Volume``: file name, channel-first shape, affine, data)
and returns ``Problem`` records: errors for what would break or mislead training (dimensions, channels,
image/label shape or affine mismatch, label values, NaN/Inf), warnings for what is merely suspicious
(extreme anisotropy, a single-slice volume). A volume smaller than the crop is not a problem (bundles pad).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch

__all__ = ["Problem", "Volume", "check_volumes", "format_problems"]

_CHUNK = 1 << 22  # elements per chunk: temporaries stay small on 512x512x300 volumes
_LISTED = 10  # offending values quoted in a message
_TRACKED = 1000  # distinct offending values tracked for the count


@dataclass(frozen=True)
class Problem:
    """One finding about one file.

    Attributes:
        file: the file concerned (for an image/label mismatch: the label file; the message names the image).
        key: the datalist key (``image``, ``label``) or, for a datalist-level problem, the list (``training``).
        message: what is wrong, with the offending shape or values.
        severity: ``"error"`` (loading or training would fail, or learn from wrong data) or ``"warning"``.
        item: where the case sits in the datalist, e.g. ``training[3]``; empty outside a datalist.
    """

    file: str
    key: str
    message: str
    severity: Literal["error", "warning"] = "error"
    item: str = ""

    def __str__(self) -> str:
        return f"{self.file} [{self.key}]: {self.message}"

    def to_dict(self) -> dict[str, str]:
        """The fields as a JSON-ready dict."""
        return asdict(self)


@dataclass
class Volume:
    """What the checks need of one loaded file.

    Attributes:
        file: the file name, quoted in messages.
        shape: the shape as ``LoadImaged(..., ensure_channel_first=True)`` gives it, ``(C, *spatial)``.
        affine: the ``(4, 4)`` voxel-to-world affine, or ``None`` when unknown (affine checks are skipped).
        data: the voxel values, or a function that reads them (called at most once, by ``check_volumes``).
            Only values are checked, so the layout need not be channel-first.
    """

    file: str
    shape: tuple[int, ...]
    affine: np.ndarray | None
    data: np.ndarray | Callable[[], np.ndarray]

    @classmethod
    def from_loaded(cls, value: Any, meta: Mapping[str, Any] | None = None) -> Volume:
        """Describe a loaded ``MetaTensor`` (or tensor/array with its ``meta`` dict) without copying its data."""
        meta = dict(meta or {})
        meta.update(getattr(value, "meta", None) or {})
        affine = meta.get("affine")
        if isinstance(value, torch.Tensor):
            value = value.as_tensor() if hasattr(value, "as_tensor") else value
            array = value.detach().cpu().numpy()
        else:
            array = np.asarray(value)
        if isinstance(affine, torch.Tensor):
            affine = affine.detach().cpu().numpy()
        affine = None if affine is None else np.asarray(affine, dtype=np.float64)
        filename = meta.get("filename_or_obj")
        return cls(file=str(filename) if filename else "<unnamed input>", shape=array.shape, affine=affine, data=array)


def _fmt_shape(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def _fmt_floats(values: Sequence[float] | np.ndarray) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


def _fmt_values(values: set[float], count_is_lower_bound: bool = False) -> str:
    listed = sorted(values)[:_LISTED]
    text = ", ".join(str(int(v)) if float(v).is_integer() else f"{float(v):.6g}" for v in listed)
    if len(values) > _LISTED:
        more = "more than " if count_is_lower_bound else ""
        text += f", ... ({more}{len(values)} distinct values)"
    return f"[{text}]"


def _chunks(array: np.ndarray) -> Iterator[np.ndarray]:
    flat = np.ravel(array, order="K")  # a view whenever the data are contiguous in some order
    for start in range(0, flat.size, _CHUNK):
        yield flat[start : start + _CHUNK]


def _spacing(affine: np.ndarray) -> np.ndarray:
    n = affine.shape[0] - 1
    return np.sqrt((affine[:n, :n] ** 2).sum(axis=0))


def _check_dims(
    vol: Volume, key: str, spatial_dims: int, in_channels: int | None, is_label: bool
) -> tuple[list[Problem], bool]:
    """Dimension and channel checks; the bool says whether the spatial layout is usable for pair checks."""
    what = "label" if is_label else "image"
    found = len(vol.shape) - 1
    if found != spatial_dims:
        if found < spatial_dims:
            hint = f"a {found}D {what} given to a {spatial_dims}D bundle"
        else:
            hint = (
                f"a {found}D {what} given to a {spatial_dims}D bundle (a time series or a 5D vector NIfTI?); "
                f"save one {spatial_dims}D volume per file, with any channels in the last dimension"
            )
        msg = (
            f"expected a {spatial_dims}D {what}, shape (C, {', '.join('HWD'[:spatial_dims])}) after "
            f"LoadImaged(ensure_channel_first=True), found shape {_fmt_shape(vol.shape)}: {hint}"
        )
        return [Problem(vol.file, key, msg)], False
    channels = int(vol.shape[0])
    if is_label and channels != 1:
        msg = (
            f"a label must have 1 channel (a map of class indices), found {channels} in shape "
            f"{_fmt_shape(vol.shape)}; one-hot or multi-channel labels are not supported"
        )
        return [Problem(vol.file, key, msg)], True
    if not is_label and in_channels is not None and channels != in_channels:
        msg = f"expected {in_channels} channel(s) (in_channels={in_channels}), found {channels} in shape {_fmt_shape(vol.shape)}"
        if channels > in_channels:
            msg += (
                "; the last dimension of a 4D file is read as channels: is this a multi-channel or time-series image?"
            )
        else:
            msg += "; a multi-channel image is one 4D file with channels last, or a list of files per item"
        return [Problem(vol.file, key, msg)], True
    return [], True


def _check_pair(vol: Volume, key: str, ref: Volume, ref_key: str, affine_atol: float) -> list[Problem]:
    if tuple(vol.shape[1:]) != tuple(ref.shape[1:]):
        msg = (
            f"spatial shape {_fmt_shape(vol.shape[1:])} differs from the {ref_key} spatial shape "
            f"{_fmt_shape(ref.shape[1:])} of {ref.file}"
        )
        return [Problem(vol.file, key, msg)]
    if vol.affine is None or ref.affine is None or vol.affine.shape != ref.affine.shape:
        return []
    diff = float(np.abs(vol.affine - ref.affine).max())
    if not diff <= affine_atol:  # also catches NaN affines
        n = vol.affine.shape[0] - 1
        msg = (
            f"affine differs from the {ref_key} affine of {ref.file} by up to {diff:.4g} (tolerance {affine_atol:g}): "
            f"spacing {_fmt_floats(_spacing(vol.affine))} vs {_fmt_floats(_spacing(ref.affine))}, "
            f"origin {_fmt_floats(vol.affine[:n, n])} vs {_fmt_floats(ref.affine[:n, n])}"
        )
        return [Problem(vol.file, key, msg)]
    return []


def _check_spacing(vol: Volume, key: str, max_anisotropy: float | None) -> list[Problem]:
    problems = []
    single = [i for i, s in enumerate(vol.shape[1:]) if s == 1]
    if single:
        msg = f"spatial shape {_fmt_shape(vol.shape[1:])} has a single slice along axis {single}: a 2D image stored as 3D?"
        problems.append(Problem(vol.file, key, msg, severity="warning"))
    if max_anisotropy is None or vol.affine is None:
        return problems
    spacing = _spacing(vol.affine)
    if spacing.min() > 0 and spacing.max() / spacing.min() > max_anisotropy:
        msg = (
            f"spacing {_fmt_floats(spacing)} is very anisotropic (largest/smallest {spacing.max() / spacing.min():.3g} "
            f"> max_anisotropy={max_anisotropy:g}); resampling to the bundle's spacing interpolates heavily"
        )
        problems.append(Problem(vol.file, key, msg, severity="warning"))
    return problems


def _check_finite(array: np.ndarray, vol: Volume, key: str) -> list[Problem]:
    if not np.issubdtype(array.dtype, np.inexact):
        return []
    n_nan = n_inf = 0
    for chunk in _chunks(array):
        n_nan += int(np.isnan(chunk).sum())
        n_inf += int(np.isinf(chunk).sum())
    if n_nan or n_inf:
        msg = f"values must be finite, found {n_nan} NaN and {n_inf} Inf among {array.size} voxels"
        return [Problem(vol.file, key, msg)]
    return []


def _check_label_values(array: np.ndarray, vol: Volume, key: str, num_classes: int | None) -> list[Problem]:
    is_float = np.issubdtype(array.dtype, np.inexact)
    out_values: set[float] = set()
    frac_values: set[float] = set()
    n_out = n_frac = 0
    for chunk in _chunks(array):
        valid = None
        if is_float:
            valid = np.isfinite(chunk)  # NaN/Inf are reported by the finiteness check
            frac = valid & (chunk != np.round(chunk))
            if frac.any():
                n_frac += int(frac.sum())
                if len(frac_values) < _TRACKED:
                    frac_values.update(np.unique(chunk[frac])[:_TRACKED].tolist())
                valid &= ~frac
        out = chunk < 0 if num_classes is None else (chunk < 0) | (chunk >= num_classes)
        if valid is not None:
            out &= valid
        if out.any():
            n_out += int(out.sum())
            if len(out_values) < _TRACKED:
                out_values.update(np.unique(chunk[out])[:_TRACKED].tolist())
    problems = []
    if n_frac:
        msg = (
            f"label values must be integer class indices, found {n_frac} voxels with non-integer values "
            f"{_fmt_values(frac_values, len(frac_values) >= _TRACKED)}: was the label resampled with linear "
            "interpolation, or is it a probability map?"
        )
        problems.append(Problem(vol.file, key, msg))
    if n_out:
        bound = "negative" if num_classes is None else f"outside [0, {num_classes}) for num_classes={num_classes}"
        msg = (
            f"label values {_fmt_values(out_values, len(out_values) >= _TRACKED)} are {bound} ({n_out} voxels); "
            "labels must be class indices, background 0 included in num_classes"
        )
        problems.append(Problem(vol.file, key, msg))
    return problems


def check_volumes(
    volumes: Mapping[str, Volume],
    label_key: str | None = "label",
    num_classes: int | None = None,
    in_channels: int | None = None,
    spatial_dims: int = 3,
    check_finite: bool = True,
    max_anisotropy: float | None = 10.0,
    affine_atol: float = 1e-3,
) -> list[Problem]:
    """Check the loaded files of one case (an image and its label); return every problem found.

    Header-level checks run first (dimensions, channels, image/label spatial shape and affine, spacing), then the
    data are read once per key for the value checks (NaN/Inf, label values). A volume smaller than the training
    crop is not a problem: the bundles pad it.

    Args:
        volumes: key -> ``Volume``; the first key other than ``label_key`` is the reference the others must
            match in spatial shape and affine.
        label_key: the key holding the label map, or ``None`` when there is none.
        num_classes: K, background included: label values must lie in ``[0, K)``. ``None``: only ``>= 0``.
        in_channels: the image channels the network expects (every non-label key); ``None``: not checked.
        spatial_dims: spatial dimensions of the bundle (3: shapes must be ``(C, H, W, D)``).
        check_finite: report NaN/Inf values.
        max_anisotropy: largest/smallest voxel spacing above which a warning is given; ``None``: no check.
        affine_atol: largest absolute difference allowed between the image and label affines.

    Returns:
        the problems, errors and warnings, in key order.
    """
    problems: list[Problem] = []
    ref_key = next((k for k in volumes if k != label_key), None)
    ref_ok = False
    for key, vol in volumes.items():
        is_label = key == label_key
        found, layout_ok = _check_dims(vol, key, spatial_dims, in_channels, is_label)
        problems += found
        if key == ref_key:
            ref_ok = layout_ok
        elif ref_key is not None and ref_ok and layout_ok:
            problems += _check_pair(vol, key, volumes[ref_key], ref_key, affine_atol)
        if key == ref_key and layout_ok:
            problems += _check_spacing(vol, key, max_anisotropy)
    for key, vol in volumes.items():
        is_label = key == label_key
        if not (check_finite or is_label):
            continue
        try:
            array = vol.data() if callable(vol.data) else vol.data
        except Exception as exc:  # a truncated or corrupt file whose header was readable
            problems.append(Problem(vol.file, key, f"cannot read the data: {type(exc).__name__}: {exc}"))
            continue
        if check_finite:
            problems += _check_finite(array, vol, key)
        if is_label:
            problems += _check_label_values(array, vol, key, num_classes)
        del array
    return problems


def format_problems(problems: Sequence[Problem]) -> str:
    """One line per problem; a count first when there are several."""
    if len(problems) == 1:
        return str(problems[0])
    return f"{len(problems)} problems:\n" + "\n".join(f"  {p}" for p in problems)
