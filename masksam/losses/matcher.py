# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Hungarian matching of query predictions to per-slice targets (Mask2Former style, MaskSAM costs)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou

from masksam.losses.point_sampling import point_sample

__all__ = ["HungarianMatcher", "pairwise_dice_cost", "pairwise_sigmoid_bce_cost", "sample_mask_pairs"]


def pairwise_sigmoid_bce_cost(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean sigmoid binary cross-entropy of every prediction against every target.

    Args:
        logits: ``(Q, P)`` mask logits at ``P`` points.
        targets: ``(M, P)`` target values in ``[0, 1]`` at the same points.

    Returns:
        ``(Q, M)`` cost ``mean_p BCEWithLogits(logits[q, p], targets[m, p])``.
    """
    num_points = logits.shape[1]
    pos = F.softplus(-logits)  # BCE against target 1
    neg = F.softplus(logits)  # BCE against target 0
    return (pos @ targets.T + neg @ (1.0 - targets).T) / max(num_points, 1)


def pairwise_dice_cost(logits: Tensor, targets: Tensor) -> Tensor:
    """Soft Dice loss (smoothing 1) of every sigmoid prediction against every target.

    Args:
        logits: ``(Q, P)`` mask logits at ``P`` points.
        targets: ``(M, P)`` target values in ``[0, 1]`` at the same points.

    Returns:
        ``(Q, M)`` cost ``1 - (2 |s t| + 1) / (|s| + |t| + 1)`` with ``s = sigmoid(logits)``.
    """
    probs = logits.sigmoid()
    numerator = 2.0 * (probs @ targets.T)
    denominator = probs.sum(dim=1)[:, None] + targets.sum(dim=1)[None, :]
    return 1.0 - (numerator + 1.0) / (denominator + 1.0)


def sample_mask_pairs(pred: Tensor, target: Tensor, coords: Tensor | None) -> tuple[Tensor, Tensor]:
    """Read predicted logits and target masks at the same locations.

    Args:
        pred: ``(Q, H', W')`` predicted mask logits.
        target: ``(M, H, W)`` float target masks.
        coords: ``(P, 2)`` shared normalised ``(x, y)`` points in ``[0, 1]``, or ``None`` for every
            target pixel (predictions of another size are bilinearly resized to ``(H, W)``, which equals
            sampling them at the target pixel centres).

    Returns:
        ``(pred_points (Q, P), target_points (M, P))``; with ``coords=None``, ``P = H * W``. Targets are
        sampled with nearest interpolation, so they stay binary.
    """
    if coords is None:
        if pred.shape[-2:] != target.shape[-2:]:
            pred = F.interpolate(pred[None], size=target.shape[-2:], mode="bilinear", align_corners=False)[0]
        return pred.flatten(1), target.flatten(1)
    pred_points = point_sample(pred[None], coords[None], mode="bilinear")[0]
    target_points = point_sample(target[None], coords[None].to(target.dtype), mode="nearest")[0]
    return pred_points, target_points


class HungarianMatcher(nn.Module):
    """One-to-one assignment of ``Q`` queries to the ``M`` targets of each slice.

    The cost of query ``q`` for target ``m`` is::

        cost_class   * (-softmax(pred_logits)[q, label_m])
      + cost_mask    * BCE(pred_masks[q], mask_m)   + cost_dice * Dice(pred_masks[q], mask_m)
      + cost_aux_mask* (BCE(aux_masks[q], mask_m)   + Dice(aux_masks[q], mask_m))
      + cost_box_l1  * L1(aux_boxes[q], box_m)      + cost_giou * (-GIoU(aux_boxes[q], box_m))

    Mask terms use logits (one sigmoid) read at ``num_points`` random points shared by all predictions
    and targets of a slice. A term is skipped when its weight is 0 or its key is missing from the
    outputs, so the same matcher serves the final outputs and the auxiliary decoder layers.

    Args:
        cost_class: weight of the classification cost.
        cost_mask: weight of the sigmoid-BCE cost on ``pred_masks``.
        cost_dice: weight of the Dice cost on ``pred_masks``.
        cost_aux_mask: weight of the BCE + Dice cost on ``aux_masks``.
        cost_box_l1: weight of the L1 cost on ``aux_boxes``.
        cost_giou: weight of the negative generalised-IoU cost on ``aux_boxes``.
        num_points: number of shared random points per slice; ``<= 0`` uses every target pixel.

    Raises:
        ValueError: if a weight is negative or all weights are zero.
    """

    def __init__(
        self,
        cost_class: float = 0.2,
        cost_mask: float = 1.2,
        cost_dice: float = 1.2,
        cost_aux_mask: float = 0.5,
        cost_box_l1: float = 0.5,
        cost_giou: float = 0.2,
        num_points: int = 12544,
    ) -> None:
        super().__init__()
        weights = {
            "cost_class": cost_class,
            "cost_mask": cost_mask,
            "cost_dice": cost_dice,
            "cost_aux_mask": cost_aux_mask,
            "cost_box_l1": cost_box_l1,
            "cost_giou": cost_giou,
        }
        for name, value in weights.items():
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}.")
        if all(value == 0 for value in weights.values()):
            raise ValueError(f"at least one matching cost must be positive, got {weights}.")
        self.cost_class = float(cost_class)
        self.cost_mask = float(cost_mask)
        self.cost_dice = float(cost_dice)
        self.cost_aux_mask = float(cost_aux_mask)
        self.cost_box_l1 = float(cost_box_l1)
        self.cost_giou = float(cost_giou)
        self.num_points = int(num_points)

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_mask={self.cost_mask}, cost_dice={self.cost_dice}, "
            f"cost_aux_mask={self.cost_aux_mask}, cost_box_l1={self.cost_box_l1}, cost_giou={self.cost_giou}, "
            f"num_points={self.num_points}"
        )

    def cost_matrix(self, outputs: Mapping[str, Any], target: Mapping[str, Tensor], index: int) -> Tensor:
        """Float32 cost matrix of one slice, computed without gradient and with autocast disabled.

        Args:
            outputs: network outputs (see :meth:`forward`).
            target: the slice's target dict with ``labels (M,)``, ``masks (M, H, W)``, ``boxes (M, 4)``.
            index: slice index ``n`` into the batch dimension of ``outputs``.

        Returns:
            ``(Q, M)`` float32 cost matrix.
        """
        reference = outputs["pred_logits"] if "pred_logits" in outputs else outputs["pred_masks"]
        with torch.no_grad(), torch.autocast(device_type=reference.device.type, enabled=False):
            return self._cost_matrix(outputs, target, index, reference)

    def _cost_matrix(
        self, outputs: Mapping[str, Any], target: Mapping[str, Tensor], index: int, reference: Tensor
    ) -> Tensor:
        device = reference.device
        num_queries = reference.shape[1]
        labels = target["labels"].to(device=device, dtype=torch.int64)
        cost = torch.zeros(num_queries, labels.shape[0], dtype=torch.float32, device=device)

        if self.cost_class > 0 and "pred_logits" in outputs:
            probs = outputs["pred_logits"][index].float().softmax(dim=-1)  # (Q, K + 1)
            cost += self.cost_class * -probs[:, labels]

        use_mask = (self.cost_mask > 0 or self.cost_dice > 0) and "pred_masks" in outputs
        use_aux = self.cost_aux_mask > 0 and "aux_masks" in outputs
        if use_mask or use_aux:
            tgt_masks = target["masks"].to(device=device, dtype=torch.float32)
            coords = None
            if self.num_points > 0:
                coords = torch.rand(self.num_points, 2, device=device, dtype=torch.float32)
            if use_mask:
                pred_pts, tgt_pts = sample_mask_pairs(outputs["pred_masks"][index].float(), tgt_masks, coords)
                if self.cost_mask > 0:
                    cost += self.cost_mask * pairwise_sigmoid_bce_cost(pred_pts, tgt_pts)
                if self.cost_dice > 0:
                    cost += self.cost_dice * pairwise_dice_cost(pred_pts, tgt_pts)
            if use_aux:
                aux_pts, tgt_pts = sample_mask_pairs(outputs["aux_masks"][index].float(), tgt_masks, coords)
                cost += self.cost_aux_mask * (
                    pairwise_sigmoid_bce_cost(aux_pts, tgt_pts) + pairwise_dice_cost(aux_pts, tgt_pts)
                )

        if (self.cost_box_l1 > 0 or self.cost_giou > 0) and "aux_boxes" in outputs:
            pred_boxes = outputs["aux_boxes"][index].float()  # (Q, 4)
            tgt_boxes = target["boxes"].to(device=device, dtype=torch.float32)  # (M, 4)
            if self.cost_box_l1 > 0:
                cost += self.cost_box_l1 * torch.cdist(pred_boxes, tgt_boxes, p=1)
            if self.cost_giou > 0:
                cost += self.cost_giou * -generalized_box_iou(pred_boxes, tgt_boxes)
        return cost

    def forward(
        self, outputs: Mapping[str, Any], targets: Sequence[Mapping[str, Tensor]]
    ) -> list[tuple[Tensor, Tensor]]:
        """Match the queries of every slice to its targets.

        Runs under :func:`torch.no_grad` with autocast disabled; every cost is computed in float32
        whatever the dtype of the outputs.

        Args:
            outputs: dict with any of ``pred_logits (N, Q, K + 1)``, ``pred_masks (N, Q, H', W')`` logits,
                ``aux_masks (N, Q, H'', W'')`` logits, ``aux_boxes (N, Q, 4)`` normalised ``xyxy``. At least
                ``pred_logits`` or ``pred_masks`` must be present. Other keys are ignored.
            targets: ``N`` dicts (see :func:`masksam.losses.slice_targets`) with ``labels (M,)``,
                ``masks (M, H, W)`` and ``boxes (M, 4)``; ``M`` may be 0.

        Returns:
            ``N`` tuples ``(pred_indices, target_indices)`` of int64 CPU tensors of length
            ``min(Q, M)``, sorted by prediction index.

        Raises:
            ValueError: if ``len(targets)`` differs from ``N``, no usable output is present, or a cost
                matrix is not finite.
        """
        if "pred_logits" not in outputs and "pred_masks" not in outputs:
            raise ValueError(f"outputs need 'pred_logits' or 'pred_masks', got keys {sorted(outputs)}.")
        reference = outputs["pred_logits"] if "pred_logits" in outputs else outputs["pred_masks"]
        if len(targets) != reference.shape[0]:
            raise ValueError(f"got {len(targets)} targets for {reference.shape[0]} slices in the outputs.")
        indices: list[tuple[Tensor, Tensor]] = []
        with torch.no_grad(), torch.autocast(device_type=reference.device.type, enabled=False):
            for n, target in enumerate(targets):
                if target["labels"].numel() == 0:
                    empty = torch.empty(0, dtype=torch.int64)
                    indices.append((empty, empty.clone()))
                    continue
                cost = self.cost_matrix(outputs, target, n).cpu()
                if not bool(torch.isfinite(cost).all()):
                    raise ValueError(f"matching cost of slice {n} is not finite: {cost.tolist()}.")
                rows, cols = linear_sum_assignment(cost.numpy())
                indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices
