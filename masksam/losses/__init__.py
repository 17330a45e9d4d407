# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Set-prediction losses of MaskSAM: per-slice targets, Hungarian matcher, point sampling, criterion."""

from __future__ import annotations

from masksam.losses.box_ops import masks_to_boxes_normalized
from masksam.losses.criterion import SetCriterion
from masksam.losses.matcher import HungarianMatcher, pairwise_dice_cost, pairwise_sigmoid_bce_cost, sample_mask_pairs
from masksam.losses.point_sampling import point_sample, uncertainty_points
from masksam.losses.targets import slice_targets, volume_to_slices
from masksam.losses.volume_loss import MaskClassificationLoss

__all__ = [
    "HungarianMatcher",
    "MaskClassificationLoss",
    "SetCriterion",
    "masks_to_boxes_normalized",
    "pairwise_dice_cost",
    "pairwise_sigmoid_bce_cost",
    "point_sample",
    "sample_mask_pairs",
    "slice_targets",
    "uncertainty_points",
    "volume_to_slices",
]
