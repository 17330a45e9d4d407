# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""The preprocessing every bundle and Auto3DSeg template of the package shares, written once.

- :func:`intensity_transform`: the intensity presets (``modality`` setting of the configs);
- :func:`load_transforms`: load with file-naming errors, validate, orient to RAS, resample, normalise;
- :func:`foreground_intensity_stats`: the training foreground's percentiles, mean and standard deviation that the
  ``ct_zscore`` preset needs (nnU-Net's CT normalisation).

Configs wire them (``_target_: masksam.transforms.load_transforms``) and append their own transforms.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import (
    EnsureTyped,
    LoadImage,
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

__all__ = ["INTENSITY_PRESETS", "foreground_intensity_stats", "intensity_transform", "load_transforms"]

#: ``modality`` values of the configs and what each does to the image.
INTENSITY_PRESETS = {
    "ct": "clip to ct_window (HU), scale to [0, 1]",
    "ct_zscore": "clip to ct_window (HU: the training foreground's 0.5 / 99.5 percentiles), then z-score with "
    "ct_mean_std (its mean and standard deviation): nnU-Net's CT normalisation, that of MaskSAM's research code",
    "mri": "z-score over the non-zero voxels, per channel",
    "percentile": "clip to the 0.5 / 99.5 percentiles of the image, scale to [0, 1] (MedSAM-style, any modality)",
}


def intensity_transform(
    modality: str,
    keys: str | Sequence[str] = "image",
    ct_window: Sequence[float] = (-175.0, 250.0),
    percentiles: Sequence[float] = (0.5, 99.5),
    ct_mean_std: Sequence[float] | None = None,
) -> MapTransform:
    """The intensity normalisation of ``modality`` (one of :data:`INTENSITY_PRESETS`).

    Args:
        modality: ``ct``, ``ct_zscore``, ``mri`` or ``percentile``.
        keys: image keys.
        ct_window: ``[lower, upper]`` HU window of ``ct`` and ``ct_zscore``.
        percentiles: ``[lower, upper]`` percentiles of ``percentile``.
        ct_mean_std: ``[mean, std]`` HU of ``ct_zscore`` (:func:`foreground_intensity_stats` computes both settings).
    """
    if modality in ("ct", "ct_zscore"):
        lo, hi = (float(v) for v in ct_window)
        if not hi > lo:
            raise ValueError(f"ct_window must be [lower, upper] with upper > lower, got {list(ct_window)}")
        if modality == "ct":
            return ScaleIntensityRanged(keys, a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)
        if ct_mean_std is None or len(ct_mean_std) != 2 or not float(ct_mean_std[1]) > 0:
            raise ValueError(
                f"modality ct_zscore needs ct_mean_std: [mean, std] (std > 0) of the training foreground in HU, got "
                f"{ct_mean_std!r}; `python -m monai.bundle run intensity_stats --config_file configs/train.yaml "
                "--dataset_dir ...` prints it with the matching ct_window"
            )
        mean, std = (float(v) for v in ct_mean_std)
        # clip to [lo, hi], then (x - mean) / std: one linear map of the window, clipped
        return ScaleIntensityRanged(
            keys, a_min=lo, a_max=hi, b_min=(lo - mean) / std, b_max=(hi - mean) / std, clip=True
        )
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
    ct_mean_std: Sequence[float] | None = None,
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
        ct_mean_std: ``[mean, std]`` HU of the ``ct_zscore`` preset.
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
        intensity_transform(modality, images, ct_window, ct_mean_std=ct_mean_std),
    ]


def foreground_intensity_stats(
    items: Sequence[Mapping[str, Any]],
    image_key: str = "image",
    label_key: str = "label",
    samples_per_case: int = 10000,
    percentiles: Sequence[float] = (0.5, 99.5),
    seed: int = 0,
) -> dict[str, list[float]]:
    """Intensity statistics of the labelled foreground (label > 0), pooled over cases, as nnU-Net plans them.

    From each case ``samples_per_case`` foreground voxels are drawn (with replacement, seeded) from the image's
    first channel; the pooled samples give the clipping window and the z-score of the ``ct_zscore`` preset.

    Args:
        items: datalist items with image and label file paths (e.g. the training list).
        image_key: key of the image path.
        label_key: key of the label path (same grid as the image).
        samples_per_case: voxels drawn per case.
        percentiles: ``[lower, upper]`` percentiles of the window.
        seed: seed of the draws.

    Returns:
        ``{"ct_window": [lower, upper], "ct_mean_std": [mean, std]}``, settings of the bundles' configs.

    Raises:
        ValueError: if ``items`` is empty, an item lacks a key, a label's shape differs from its image's, or no case
            has foreground (each names the item or file).
    """
    if not items:
        raise ValueError("foreground_intensity_stats needs at least one item with an image and a label")
    if samples_per_case < 1:
        raise ValueError(f"samples_per_case must be >= 1, got {samples_per_case}")
    rng = np.random.default_rng(seed)
    load = LoadImage(image_only=True, ensure_channel_first=True)
    pooled = []
    for i, item in enumerate(items):
        missing = [k for k in (image_key, label_key) if k not in item]
        if missing:
            raise ValueError(f"datalist item {i} has no {missing} key(s): {dict(item)}")
        image = np.asarray(load(item[image_key]))[0]
        label = np.asarray(load(item[label_key]))[0]
        if image.shape != label.shape:
            raise ValueError(
                f"label {item[label_key]} has shape {label.shape}, its image {item[image_key]} has {image.shape}"
            )
        foreground = image[label > 0]
        if foreground.size:
            pooled.append(rng.choice(foreground, size=samples_per_case, replace=True))
    if not pooled:
        raise ValueError(f"no foreground (label > 0) in any of the {len(items)} labels: nothing to compute")
    values = np.concatenate(pooled).astype(np.float64)
    lower, upper = (float(v) for v in np.percentile(values, list(percentiles)))
    return {"ct_window": [lower, upper], "ct_mean_std": [float(values.mean()), float(values.std())]}
