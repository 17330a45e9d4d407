# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Input validation transforms whose errors name the file, the key and the offending shape or value.

``ValidateInputd`` goes right after ``LoadImaged(..., ensure_channel_first=True)`` in a bundle's preprocessing,
so a bad case fails when the dataset is loaded, before any training step, with a message such as
``/data/labelsTr/case_007.nii.gz [label]: label values [16, 17] are outside [0, 16) for num_classes=16 ...``.
``CheckedLoadImaged`` is ``LoadImaged`` whose read errors (a corrupt or truncated file) name the file and key.
The checks live in :mod:`masksam.transforms.checks`; :mod:`masksam.validate_data` runs them over a datalist.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Mapping
from typing import Any

from monai.config import KeysCollection
from monai.transforms import LoadImaged, MapTransform

from masksam.transforms.checks import Volume, check_volumes, format_problems

__all__ = ["ValidateInputd", "CheckedLoadImaged"]

logger = logging.getLogger(__name__)


class ValidateInputd(MapTransform):
    """Check loaded images and labels; raise ``ValueError`` naming the file, key and offending shape or value.

    Place it right after ``LoadImaged(keys, ensure_channel_first=True)``. Errors: a 2D or 4D image in a 3D bundle,
    a wrong channel count, a label with several channels, image/label spatial shape or affine mismatch, label
    values that are not integers in ``[0, num_classes)``, NaN/Inf values. Warnings (logged): extreme anisotropy, a
    single-slice volume. A volume smaller than the crop passes (the bundle pads it). The data are returned as
    they came.

    Args:
        keys: the keys to check; ``label_key`` among them is checked as a label, the others as images.
        label_key: the label's key (need not be in ``keys``: then no label checks, as in inference).
        num_classes: K, background included; ``None``: label values are only checked to be ``>= 0``.
        in_channels: channels of every image key; ``None``: not checked.
        spatial_dims: spatial dimensions of the bundle.
        check_finite: report NaN/Inf values.
        max_anisotropy: largest/smallest voxel spacing above which a warning is logged; ``None``: no check.
        affine_atol: largest absolute difference allowed between the image and label affines.
        meta_key_postfix: where metadata live when ``LoadImaged(image_only=False)`` was used.
        allow_missing_keys: do not raise when a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        label_key: str | None = "label",
        num_classes: int | None = None,
        in_channels: int | None = None,
        spatial_dims: int = 3,
        check_finite: bool = True,
        max_anisotropy: float | None = 10.0,
        affine_atol: float = 1e-3,
        meta_key_postfix: str = "meta_dict",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 or None, got {num_classes}")
        if in_channels is not None and in_channels < 1:
            raise ValueError(f"in_channels must be >= 1 or None, got {in_channels}")
        if spatial_dims < 1:
            raise ValueError(f"spatial_dims must be >= 1, got {spatial_dims}")
        if max_anisotropy is not None and max_anisotropy < 1:
            raise ValueError(f"max_anisotropy must be >= 1 or None, got {max_anisotropy}")
        if affine_atol < 0:
            raise ValueError(f"affine_atol must be >= 0, got {affine_atol}")
        self.label_key = label_key
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.spatial_dims = spatial_dims
        self.check_finite = check_finite
        self.max_anisotropy = max_anisotropy
        self.affine_atol = affine_atol
        self.meta_key_postfix = meta_key_postfix

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        volumes = {
            str(key): Volume.from_loaded(d[key], d.get(f"{key}_{self.meta_key_postfix}"))
            for key in self.key_iterator(d)
        }
        problems = check_volumes(
            volumes,
            label_key=self.label_key,
            num_classes=self.num_classes,
            in_channels=self.in_channels,
            spatial_dims=self.spatial_dims,
            check_finite=self.check_finite,
            max_anisotropy=self.max_anisotropy,
            affine_atol=self.affine_atol,
        )
        for problem in problems:
            if problem.severity == "warning":
                logger.warning("%s", problem)
        errors = [p for p in problems if p.severity == "error"]
        if errors:
            raise ValueError(format_problems(errors))
        return d


class _ReadError(Exception):
    def __init__(self, filename: Any) -> None:
        super().__init__(filename)
        self.filename = filename


class _FileNamingLoader:
    """Wraps ``LoadImage``: a failed read raises ``_ReadError`` carrying the file name (the cause is kept)."""

    def __init__(self, loader: Callable[..., Any]) -> None:
        self.loader = loader

    def __call__(self, filename: Any, reader: Any = None) -> Any:
        try:
            return self.loader(filename, reader)
        except Exception as exc:
            raise _ReadError(filename) from exc

    def __getattr__(self, name: str) -> Any:  # image_only, register, readers... of the wrapped LoadImage
        if name == "loader":  # not yet set (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.loader, name)


class CheckedLoadImaged(LoadImaged):
    """``LoadImaged`` whose read errors name the key and the file.

    A corrupt or truncated file makes ``LoadImaged`` raise the reader's error, which may not say which file
    (``EOFError: Compressed file ended before the end-of-stream marker was reached``). This transform raises
    ``ValueError("<file> [<key>]: cannot read the file: <error>")`` instead, chained to the reader's error.
    Arguments are those of ``LoadImaged``.
    """

    def __init__(self, keys: KeysCollection, *args: Any, **kwargs: Any) -> None:
        super().__init__(keys, *args, **kwargs)
        self._loader = _FileNamingLoader(self._loader)

    def __call__(self, data: Mapping[Hashable, Any], reader: Any = None) -> dict[Hashable, Any]:
        try:
            return super().__call__(data, reader)
        except _ReadError as exc:
            key = next((str(k) for k in self.keys if k in data and data[k] is exc.filename), "?")
            cause = exc.__cause__
            raise ValueError(
                f"{exc.filename} [{key}]: cannot read the file: {type(cause).__name__}: {cause}"
            ) from cause
