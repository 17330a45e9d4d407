# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""The set criterion behind a ``loss(pred, label)`` interface, so MONAI's ``SupervisedTrainer`` drives it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from masksam.losses.criterion import SetCriterion
from masksam.losses.targets import slice_targets, volume_to_slices

__all__ = ["MaskClassificationLoss"]


class MaskClassificationLoss(nn.Module):
    """``loss(outputs, label) -> total`` for mask-classification networks on label volumes.

    Builds per-slice targets from the label volume (every present value, background included, is one
    target), runs the criterion, keeps the named terms (detached floats) in :attr:`last_terms` for
    logging, and returns the scalar ``total``.

    Args:
        criterion: a :class:`SetCriterion`.
        ignore_index: optional label value that makes no target.
    """

    def __init__(self, criterion: SetCriterion, ignore_index: int | None = None) -> None:
        super().__init__()
        self.criterion = criterion
        self.ignore_index = ignore_index
        self.last_terms: dict[str, float] = {}

    def forward(self, outputs: Mapping[str, Any], label: torch.Tensor) -> torch.Tensor:
        """Args: network output dict (per-slice, ``N = B * D``) and label volume ``(B, 1, H, W, D)``."""
        targets = slice_targets(volume_to_slices(label), self.criterion.num_classes, self.ignore_index)
        terms = self.criterion(outputs, targets)
        self.last_terms = {k: float(v.detach()) for k, v in terms.items()}
        return terms["total"]
