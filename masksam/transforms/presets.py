# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""The preprocessing every bundle and Auto3DSeg template of the package shares, written once.

- :func:`intensity_transform`: the intensity presets (``modality`` setting of the configs);
- :func:`load_transforms`: load with file-naming errors, validate, orient to RAS, resample, normalise.

Configs wire them (``_target_: masksam.transforms.load_transforms``) and append their own transforms.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.transforms import (
    EnsureTyped,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
    Spacingd,
)

from masksam.transforms.prompt_space import PromptsToWorldd
from masksam.transforms.prompts import LoadPromptsd
from masksam.transforms.validation import CheckedLoadImaged, ValidateInputd

__all__ = ["INTENSITY_PRESETS", "intensity_transform", "load_transforms"]

#: ``modality`` values of the configs and what each does to the image.
INTENSITY_PRESETS = {
    "ct": "clip to ct_window (HU), scale to [0, 1]",
    "mri": "z-score over the non-zero voxels, per channel",
    "percentile": "clip to the 0.5 / 99.5 percentiles of the image, scale to [0, 1] (MedSAM-style, any modality)",
}


def intensity_transform(
    modality: str,
    keys: str | Sequence[str] = "image",
    ct_window: Sequence[float] = (-175.0, 250.0),
    percentiles: Sequence[float] = (0.5, 99.5),
) -> MapTransform:
    """The intensity normalisation of ``modality`` (one of :data:`INTENSITY_PRESETS`).

    Args:
        modality: ``ct``, ``mri`` or ``percentile``.
        keys: image keys.
        ct_window: ``[lower, upper]`` HU window of ``ct``.
        percentiles: ``[lower, upper]`` percentiles of ``percentile``.
    """
    if modality == "ct":
        lo, hi = (float(v) for v in ct_window)
        if not hi > lo:
            raise ValueError(f"ct_window must be [lower, upper] with upper > lower, got {list(ct_window)}")
        return ScaleIntensityRanged(keys, a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)
    if modality == "mri":
        return NormalizeIntensityd(keys, nonzero=True, channel_wise=True)
    if modality == "percentile":
        lo, hi = (float(v) for v in percentiles)
        return ScaleIntensityRangePercentilesd(keys, lower=lo, upper=hi, b_min=0.0, b_max=1.0, clip=True)
    raise ValueError(f"unknown modality {modality!r}: expected one of {sorted(INTENSITY_PRESETS)}")


def load_transforms(
    keys: Sequence[str] = ("image", "label"),
    spacing: Sequence[float] | None = (1.0, 1.0, 1.0),
    modality: str = "ct",
    ct_window: Sequence[float] = (-175.0, 250.0),
    label_key: str | None = "label",
    num_classes: int | None = None,
    in_channels: int | None = None,
    max_anisotropy: float | None = 10.0,
    prompt_key: str | None = None,
) -> list[MapTransform]:
    """Load, validate, orient to RAS, resample to ``spacing`` and normalise the intensities.

    Args:
        keys: the image key first, then the label key when there is one.
        spacing: target voxel spacing (mm), slice axis last; None keeps each image's own grid (no resampling).
        modality: intensity preset (:func:`intensity_transform`).
        ct_window: HU window of the ``ct`` preset.
        label_key: the label among ``keys`` (resampled with nearest neighbours), or None.
        num_classes: K, background included (labels must lie in ``0..K-1``).
        in_channels: image channels expected.
        max_anisotropy: warn above this ratio of largest to smallest voxel spacing.
        prompt_key: key of a prompt file (or inline prompts) of the image: loaded and validated against the loaded
            image (:class:`~masksam.transforms.LoadPromptsd`) and carried in world coordinates
            (:class:`~masksam.transforms.PromptsToWorldd`) through the spatial transforms; a prompted pipeline maps
            them to its model space with :class:`~masksam.transforms.PromptsToVoxeld` at the end.

    Returns:
        the transforms, in order: :class:`CheckedLoadImaged` (read errors name file and key),
        :class:`ValidateInputd` (shapes, affines, label values, NaN), the prompt transforms (with ``prompt_key``),
        ``EnsureTyped`` (float32),
        ``Orientationd`` (RAS), ``Spacingd`` (bilinear for images, nearest for the label; unless ``spacing``
        is None), the intensity preset.
    """
    keys = list(keys)
    if label_key is not None and label_key not in keys:
        raise ValueError(f"label_key {label_key!r} is not among keys {keys}")
    images = [k for k in keys if k != label_key]
    modes = ["nearest" if k == label_key else "bilinear" for k in keys]
    resample = [] if spacing is None else [Spacingd(keys, pixdim=list(spacing), mode=modes)]
    return [
        CheckedLoadImaged(keys, ensure_channel_first=True, image_only=True),
        ValidateInputd(
            keys,
            label_key=label_key,
            num_classes=num_classes,
            in_channels=in_channels,
            max_anisotropy=max_anisotropy,
        ),
        *(
            [LoadPromptsd(prompt_key, image_key=images[0]), PromptsToWorldd(prompt_key, image_key=images[0])]
            if prompt_key
            else []
        ),
        EnsureTyped(keys, dtype=torch.float32),
        Orientationd(keys, axcodes="RAS"),
        *resample,
        intensity_transform(modality, images, ct_window),
    ]
