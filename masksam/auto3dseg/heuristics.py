# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Generic settings of the algorithm templates from Auto3DSeg's DataAnalyzer statistics: small pure functions.

The statistics are those of ``datastats.yaml`` (keys such as ``stats_summary#image_stats#spacing#median``), computed
after ``Orientationd(RAS)``, so the last spatial axis is the slice axis. :func:`template_settings` combines the rules
every template shares (channels, classes, intensity, spacing, patch, schedule); each rule is its own function so that
it can be tested and reused. Per-method rules (MaskSAM's slices and queries) are in
:mod:`masksam.auto3dseg.method_heuristics`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "datastats_value",
    "intensity_normalization",
    "ct_window",
    "target_spacing",
    "resampled_shape",
    "median_resampled_shape",
    "in_plane_patch_size",
    "num_classes_from_labels",
    "training_schedule",
    "validation_interval",
    "template_settings",
]


def datastats_value(stats: Mapping[str, Any], key: str) -> Any:
    """Value at a ``#``-separated path of a DataAnalyzer statistics dict; ``KeyError`` names the missing path."""
    node: Any = stats
    for part in key.split("#"):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(
                f"DataAnalyzer statistics lack {key!r} (no {part!r}); was datastats.yaml written by DataAnalyzer?"
            )
        node = node[part]
    return node


def intensity_normalization(modality: str | Mapping[str, str]) -> str:
    """``"ct"`` (fixed window, scaled to [0, 1]) for CT, ``"mri"`` (channel-wise z-score on non-zero voxels) otherwise.

    Args:
        modality: the ``modality`` of ``input.yaml`` (``"CT"``, ``"MRI"``, ``"mr"``...) or a datalist's
            ``{"0": "CT"}`` mapping (its first channel decides).
    """
    if isinstance(modality, Mapping):
        if not modality:
            raise ValueError("modality mapping is empty")
        modality = str(next(iter(modality.values())))
    name = str(modality).strip().lower()
    if not name:
        raise ValueError("modality is empty; expected e.g. 'CT' or 'MRI'")
    return "ct" if name.startswith("ct") else "mri"


def ct_window(lower: float, upper: float) -> list[float]:
    """Clipping window ``[lower, upper]`` from the foreground 0.5 / 99.5 intensity percentiles.

    A degenerate window (``upper <= lower``, e.g. a constant foreground) is widened to ``[lower, lower + 1]`` so that
    scaling never divides by zero.
    """
    lower, upper = float(lower), float(upper)
    if not (math.isfinite(lower) and math.isfinite(upper)):
        raise ValueError(f"CT window bounds must be finite, got [{lower}, {upper}]")
    if upper <= lower:
        upper = lower + 1.0
    return [lower, upper]


def target_spacing(median_spacing: Sequence[float]) -> list[float]:
    """Median spacing made isotropic in-plane: ``[s, s, z]`` with ``s`` the finer of the two in-plane medians.

    Args:
        median_spacing: ``(x, y, z)`` median voxel spacing (mm), slice axis last.
    """
    if len(median_spacing) != 3:
        raise ValueError(f"expected a 3D spacing (x, y, z), got {list(median_spacing)}")
    x, y, z = (float(s) for s in median_spacing)
    if min(x, y, z) <= 0 or not all(math.isfinite(s) for s in (x, y, z)):
        raise ValueError(f"spacing must be positive and finite, got {[x, y, z]}")
    s = min(x, y)
    return [round(s, 4), round(s, 4), round(z, 4)]


def resampled_shape(shape: Sequence[float], spacing: Sequence[float], target: Sequence[float]) -> list[int]:
    """Shape of a volume of ``shape`` voxels at ``spacing`` after resampling to ``target`` spacing (at least 1)."""
    if not len(shape) == len(spacing) == len(target):
        raise ValueError(f"shape, spacing and target must have equal lengths, got {shape}, {spacing}, {target}")
    return [max(1, round(float(n) * float(s) / float(t))) for n, s, t in zip(shape, spacing, target, strict=True)]


def median_resampled_shape(stats: Mapping[str, Any], target: Sequence[float]) -> list[int]:
    """Median image shape of the statistics after resampling to ``target`` spacing."""
    summary = "stats_summary#image_stats#"
    spacing = datastats_value(stats, summary + "spacing#median")
    return resampled_shape(datastats_value(stats, summary + "shape#median"), spacing, target)


def in_plane_patch_size(
    in_plane_shape: Sequence[int], multiple: int = 16, max_size: int = 512, min_size: int = 64
) -> int:
    """Square in-plane patch size S: the larger in-plane extent rounded up to ``multiple``, within [min, max].

    Rounding up covers a whole median slice (padding at most ``multiple - 1`` pixels) up to ``max_size``; larger
    slices are tiled by the sliding-window inferer.

    Args:
        in_plane_shape: median ``(H, W)`` after resampling.
        multiple: the encoder's patch size (16 for SAM ViTs, 64 for LiteMedSAM).
        max_size: largest patch (SAM's decoder cost grows with S^2).
        min_size: smallest patch.
    """
    if multiple < 1 or min_size < multiple or max_size < min_size:
        raise ValueError(f"need 1 <= multiple <= min_size <= max_size, got {multiple}, {min_size}, {max_size}")
    extent = max(int(n) for n in in_plane_shape)
    size = math.ceil(extent / multiple) * multiple
    lo = math.ceil(min_size / multiple) * multiple
    hi = max_size // multiple * multiple
    return int(min(max(size, lo), hi))


def num_classes_from_labels(labels: Sequence[int]) -> int:
    """K from the label values found by DataAnalyzer, which must be ``0..K-1`` (as Auto3DSeg's ensembling assumes)."""
    values = sorted({int(v) for v in labels})
    if values != list(range(len(values))) or len(values) < 2:
        raise ValueError(
            f"label values must be consecutive from 0 (background) with at least one foreground class, got {values}"
        )
    return len(values)


def validation_interval(max_epochs: int, validations: int = 20) -> int:
    """Epochs between validations so that a run validates about ``validations`` times (at least every epoch)."""
    if max_epochs < 1 or validations < 1:
        raise ValueError(f"max_epochs and validations must be >= 1, got {max_epochs} and {validations}")
    return max(1, max_epochs // validations)


def training_schedule(
    n_cases: int,
    num_folds: int = 5,
    target_steps: int = 50_000,
    min_epochs: int = 50,
    max_epochs: int = 1000,
    validations: int = 20,
) -> dict[str, int]:
    """Batch size, epochs and validation interval scaled to the dataset size.

    The training fold holds about ``n_cases * (1 - 1 / num_folds)`` volumes; the batch holds 2 volumes from 64 of
    them on, else 1; the epochs give about ``target_steps`` optimiser steps within ``[min_epochs, max_epochs]``;
    validation runs about ``validations`` times.

    Returns:
        ``{"batch_size", "max_epochs", "val_interval"}``.
    """
    if n_cases < 1 or num_folds < 1:
        raise ValueError(f"n_cases and num_folds must be >= 1, got {n_cases} and {num_folds}")
    if not 1 <= min_epochs <= max_epochs:
        raise ValueError(f"need 1 <= min_epochs <= max_epochs, got {min_epochs} and {max_epochs}")
    n_train = max(1, round(n_cases * (1 - 1 / num_folds))) if num_folds > 1 else n_cases
    batch_size = 2 if n_train >= 64 else 1
    steps_per_epoch = math.ceil(n_train / batch_size)
    epochs = min(max(round(target_steps / steps_per_epoch), min_epochs), max_epochs)
    return {
        "batch_size": batch_size,
        "max_epochs": int(epochs),
        "val_interval": validation_interval(epochs, validations),
    }


def template_settings(
    stats: Mapping[str, Any], modality: str | Mapping[str, str], num_folds: int = 5, patch_multiple: int = 16
) -> dict[str, Any]:
    """Every data-driven setting of a template from the DataAnalyzer statistics (``datastats.yaml`` content).

    Args:
        stats: the statistics dict (``stats_summary`` at its root).
        modality: ``input.yaml``'s modality.
        num_folds: cross-validation folds (sizes the training fold).
        patch_multiple: in-plane patch multiple of the backbone.

    Returns:
        ``in_channels``, ``num_classes``, ``modality`` (``ct``/``mri``), ``ct_window`` (CT only), ``spacing``,
        ``patch_size``, ``batch_size``, ``max_epochs``, ``val_interval``.
    """
    summary = "stats_summary#"
    norm = intensity_normalization(modality)
    spacing = target_spacing(datastats_value(stats, summary + "image_stats#spacing#median"))
    shape = median_resampled_shape(stats, spacing)
    settings: dict[str, Any] = {
        "in_channels": int(datastats_value(stats, summary + "image_stats#channels#max")),
        "num_classes": num_classes_from_labels(datastats_value(stats, summary + "label_stats#labels")),
        "modality": norm,
        "spacing": spacing,
        "patch_size": in_plane_patch_size(shape[:2], multiple=patch_multiple),
    }
    if norm == "ct":
        fg = summary + "image_foreground_stats#intensity#"
        settings["ct_window"] = ct_window(
            datastats_value(stats, fg + "percentile_00_5"), datastats_value(stats, fg + "percentile_99_5")
        )
    settings.update(training_schedule(int(datastats_value(stats, summary + "n_cases")), num_folds=num_folds))
    return settings
