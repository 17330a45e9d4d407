# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Set criterion of MaskSAM: Hungarian-matched class, mask, auxiliary-mask and auxiliary-box losses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou_loss

from masksam.losses.matcher import HungarianMatcher
from masksam.losses.point_sampling import point_sample, uncertainty_points

__all__ = ["SetCriterion"]


class SetCriterion(nn.Module):
    """MaskSAM training loss over the slices of a batch (weights applied inside).

    The slices of the 3D patches are folded into the batch (``N = B * D`` slices, index ``n = b * D + d``)
    and every slice is an independent set-prediction problem: the :class:`HungarianMatcher` assigns
    queries to targets, then

    - ``loss_ce``: cross-entropy over ``K + 1`` classes for all queries, unmatched queries labelled
      no-object (index ``K``), whose weight is ``eos_coef`` (buffer ``empty_weight``);
    - ``loss_mask`` / ``loss_dice``: sigmoid BCE / Dice of the matched ``pred_masks`` logits at
      PointRend importance-sampled points;
    - ``loss_aux_mask`` / ``loss_aux_dice``: the same on the matched ``aux_masks`` logits (one sigmoid);
    - ``loss_box_l1`` / ``loss_giou``: L1 and ``1 - GIoU`` of the matched ``aux_boxes``;
    - for every ``outputs["aux_outputs"][i]`` (matched separately): ``loss_ce_{i}``, ``loss_mask_{i}``,
      ``loss_dice_{i}``;
    - ``total``: the sum of all the above.

    Mask and box terms are summed over matched pairs and divided by the number of target masks in the
    batch, averaged over ``torch.distributed`` ranks when a process group is initialised and clamped
    to at least 1. Every term is computed in float32 with autocast disabled.

    Args:
        num_classes: number of classes ``K`` including background; the class head has ``K + 1`` outputs.
        matcher: the matcher used for the final outputs and for every auxiliary output.
        weight_class: weight of ``loss_ce``.
        weight_mask: weight of ``loss_mask``.
        weight_dice: weight of ``loss_dice``.
        weight_aux_mask: weight of ``loss_aux_mask``.
        weight_aux_dice: weight of ``loss_aux_dice``.
        weight_box_l1: weight of ``loss_box_l1``.
        weight_giou: weight of ``loss_giou``.
        eos_coef: cross-entropy weight of the no-object class.
        num_points: points per mask for the mask losses; ``<= 0`` uses every target pixel (deterministic).
        oversample_ratio: PointRend candidate oversampling factor (``>= 1``).
        importance_sample_ratio: fraction of the points chosen by uncertainty (in ``[0, 1]``).

    Raises:
        ValueError: if an argument is out of range.
    """

    empty_weight: Tensor

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        weight_class: float = 0.2,
        weight_mask: float = 1.2,
        weight_dice: float = 1.2,
        weight_aux_mask: float = 0.5,
        weight_aux_dice: float = 0.5,
        weight_box_l1: float = 0.5,
        weight_giou: float = 0.2,
        eos_coef: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 2.0,
        importance_sample_ratio: float = 0.75,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        if not isinstance(matcher, HungarianMatcher):
            raise ValueError(f"matcher must be a HungarianMatcher, got {type(matcher).__name__}.")
        weights = {
            "weight_class": weight_class,
            "weight_mask": weight_mask,
            "weight_dice": weight_dice,
            "weight_aux_mask": weight_aux_mask,
            "weight_aux_dice": weight_aux_dice,
            "weight_box_l1": weight_box_l1,
            "weight_giou": weight_giou,
            "eos_coef": eos_coef,
        }
        for name, value in weights.items():
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}.")
        if oversample_ratio < 1.0:
            raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}.")
        if not 0.0 <= importance_sample_ratio <= 1.0:
            raise ValueError(f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}.")
        self.num_classes = int(num_classes)
        self.matcher = matcher
        self.weight_class = float(weight_class)
        self.weight_mask = float(weight_mask)
        self.weight_dice = float(weight_dice)
        self.weight_aux_mask = float(weight_aux_mask)
        self.weight_aux_dice = float(weight_aux_dice)
        self.weight_box_l1 = float(weight_box_l1)
        self.weight_giou = float(weight_giou)
        self.eos_coef = float(eos_coef)
        self.num_points = int(num_points)
        self.oversample_ratio = float(oversample_ratio)
        self.importance_sample_ratio = float(importance_sample_ratio)
        empty_weight = torch.ones(self.num_classes + 1)
        empty_weight[-1] = self.eos_coef
        self.register_buffer("empty_weight", empty_weight)
        # Per-mask soft Dice with smoothing 1 (Mask2Former convention); summed, then divided by num_masks.
        self.dice = DiceLoss(sigmoid=True, smooth_nr=1.0, smooth_dr=1.0, reduction="sum")

    def num_masks(self, targets: Sequence[Mapping[str, Tensor]], device: torch.device) -> float:
        """Normaliser of the mask and box losses.

        Args:
            targets: the batch's per-slice targets.
            device: device of the count tensor (must suit the process-group backend).

        Returns:
            Total number of targets, averaged over ranks if ``torch.distributed`` is initialised,
            clamped to ``>= 1``.
        """
        count = torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(count)
            count = count / dist.get_world_size()
        return float(count.clamp(min=1.0).item())

    def _loss_ce(
        self, logits: Tensor, targets: Sequence[Mapping[str, Tensor]], indices: list[tuple[Tensor, Tensor]]
    ) -> Tensor:
        """Weighted cross-entropy over ``K + 1`` classes; ``logits`` is ``(N, Q, K + 1)``."""
        if logits.shape[-1] != self.num_classes + 1:
            raise ValueError(
                f"pred_logits must have {self.num_classes + 1} classes (K + 1), got shape {tuple(logits.shape)}."
            )
        logits = logits.float()
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        batch_idx, src_idx = _prediction_index(indices, logits.device)
        if batch_idx.numel() > 0:
            target_classes[batch_idx, src_idx] = torch.cat(
                [t["labels"][j].to(logits.device) for t, (_, j) in zip(targets, indices, strict=True)]
            ).to(torch.int64)
        return F.cross_entropy(logits.transpose(1, 2), target_classes, weight=self.empty_weight.float())

    def _mask_losses(
        self,
        masks: Tensor,
        targets: Sequence[Mapping[str, Tensor]],
        indices: list[tuple[Tensor, Tensor]],
        num_masks: float,
    ) -> tuple[Tensor, Tensor]:
        """Sum over matched pairs of (mean BCE, Dice) at sampled points, divided by ``num_masks``.

        ``masks`` is ``(N, Q, H', W')`` logits; target masks ``(M, H, W)`` may have another size.
        """
        batch_idx, src_idx = _prediction_index(indices, masks.device)
        if batch_idx.numel() == 0:
            zero = masks.float().sum() * 0.0
            return zero, zero.clone()
        src = masks[batch_idx, src_idx].float()[:, None]  # (Mtot, 1, H', W')
        tgt = torch.cat([t["masks"][j].to(masks.device) for t, (_, j) in zip(targets, indices, strict=True)])
        tgt = tgt.float()[:, None]  # (Mtot, 1, H, W)
        if self.num_points > 0:
            coords = uncertainty_points(src, self.num_points, self.oversample_ratio, self.importance_sample_ratio)
            point_logits = point_sample(src, coords)  # (Mtot, 1, P)
            point_labels = point_sample(tgt, coords, mode="nearest")
        else:
            if src.shape[-2:] != tgt.shape[-2:]:
                src = F.interpolate(src, size=tgt.shape[-2:], mode="bilinear", align_corners=False)
            point_logits, point_labels = src.flatten(2), tgt.flatten(2)
        bce = F.binary_cross_entropy_with_logits(point_logits, point_labels, reduction="none").mean(dim=2).sum()
        dice = self.dice(point_logits, point_labels)
        return bce / num_masks, dice / num_masks

    def _box_losses(
        self,
        boxes: Tensor,
        targets: Sequence[Mapping[str, Tensor]],
        indices: list[tuple[Tensor, Tensor]],
        num_masks: float,
    ) -> tuple[Tensor, Tensor]:
        """L1 and ``1 - GIoU`` of matched ``(N, Q, 4)`` boxes, summed and divided by ``num_masks``."""
        batch_idx, src_idx = _prediction_index(indices, boxes.device)
        if batch_idx.numel() == 0:
            zero = boxes.float().sum() * 0.0
            return zero, zero.clone()
        src = boxes[batch_idx, src_idx].float()
        tgt = torch.cat([t["boxes"][j].to(boxes.device) for t, (_, j) in zip(targets, indices, strict=True)]).float()
        l1 = F.l1_loss(src, tgt, reduction="sum")
        giou = generalized_box_iou_loss(src, tgt, reduction="sum")
        return l1 / num_masks, giou / num_masks

    def _layer_losses(
        self,
        outputs: Mapping[str, Any],
        targets: Sequence[Mapping[str, Tensor]],
        num_masks: float,
        suffix: str,
        with_aux_heads: bool,
    ) -> dict[str, Tensor]:
        """Match one output set and compute its weighted terms."""
        for key in ("pred_logits", "pred_masks"):
            if key not in outputs:
                where = "outputs" if not suffix else f"aux_outputs[{suffix[1:]}]"
                raise ValueError(f"{where} lack {key!r}; got keys {sorted(outputs)}.")
        indices = self.matcher(outputs, targets)
        losses: dict[str, Tensor] = {}
        losses[f"loss_ce{suffix}"] = self.weight_class * self._loss_ce(outputs["pred_logits"], targets, indices)
        bce, dice = self._mask_losses(outputs["pred_masks"], targets, indices, num_masks)
        losses[f"loss_mask{suffix}"] = self.weight_mask * bce
        losses[f"loss_dice{suffix}"] = self.weight_dice * dice
        if with_aux_heads and "aux_masks" in outputs:
            bce, dice = self._mask_losses(outputs["aux_masks"], targets, indices, num_masks)
            losses["loss_aux_mask"] = self.weight_aux_mask * bce
            losses["loss_aux_dice"] = self.weight_aux_dice * dice
        if with_aux_heads and "aux_boxes" in outputs:
            l1, giou = self._box_losses(outputs["aux_boxes"], targets, indices, num_masks)
            losses["loss_box_l1"] = self.weight_box_l1 * l1
            losses["loss_giou"] = self.weight_giou * giou
        return losses

    def forward(self, outputs: Mapping[str, Any], targets: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
        """Compute the weighted loss terms and their sum.

        Args:
            outputs: network output dict (slices folded into the batch, ``N = B * D``):

                - ``pred_logits``: ``(N, Q, K + 1)`` class logits, last = no-object (required);
                - ``pred_masks``: ``(N, Q, H', W')`` final mask logits (required);
                - ``aux_masks``: ``(N, Q, H'', W'')`` prompt-generator mask logits (optional; not sigmoided);
                - ``aux_boxes``: ``(N, Q, 4)`` prompt-generator boxes, normalised ``(x1, y1, x2, y2)`` in
                  ``[0, 1]`` with ``x2 >= x1``, ``y2 >= y1`` (optional);
                - ``aux_outputs``: optional list of dicts with ``pred_logits`` and ``pred_masks`` of
                  intermediate decoder layers, shapes as above.

                Mask resolutions may differ from the targets'; sampling uses normalised coordinates.
            targets: ``N`` dicts from :func:`masksam.losses.slice_targets`: ``labels (M,)`` int64,
                ``masks (M, H, W)`` float, ``boxes (M, 4)`` normalised ``xyxy``.

        Returns:
            Dict of scalar float32 tensors: ``loss_ce``, ``loss_mask``, ``loss_dice``, ``loss_aux_mask`` and
            ``loss_aux_dice`` (if ``aux_masks`` given), ``loss_box_l1`` and ``loss_giou`` (if ``aux_boxes``
            given), ``loss_ce_{i}``, ``loss_mask_{i}``, ``loss_dice_{i}`` per auxiliary output ``i``, and
            ``total``. All terms already carry their weights.

        Raises:
            ValueError: if a required key is missing or the class dimension is not ``K + 1``.
        """
        device = outputs["pred_logits"].device if "pred_logits" in outputs else self.empty_weight.device
        with torch.autocast(device_type=device.type, enabled=False):
            num_masks = self.num_masks(targets, device)
            losses = self._layer_losses(outputs, targets, num_masks, suffix="", with_aux_heads=True)
            for i, aux in enumerate(outputs.get("aux_outputs", None) or []):
                losses.update(self._layer_losses(aux, targets, num_masks, suffix=f"_{i}", with_aux_heads=False))
            losses["total"] = torch.stack(list(losses.values())).sum()
        return losses


def _prediction_index(indices: list[tuple[Tensor, Tensor]], device: torch.device) -> tuple[Tensor, Tensor]:
    """Flatten per-slice matches into ``(slice_index (Mtot,), query_index (Mtot,))`` on ``device``."""
    if not indices:
        empty = torch.empty(0, dtype=torch.int64, device=device)
        return empty, empty.clone()
    batch_idx = torch.cat([torch.full_like(src, n) for n, (src, _) in enumerate(indices)])
    src_idx = torch.cat([src for src, _ in indices])
    return batch_idx.to(device=device, dtype=torch.int64), src_idx.to(device=device, dtype=torch.int64)
