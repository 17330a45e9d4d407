# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""From mask classification (class logits + mask logits per query) to per-voxel class scores."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["semantic_scores", "SemanticWrapper"]


def semantic_scores(pred_logits: torch.Tensor, pred_masks: torch.Tensor) -> torch.Tensor:
    """MaskFormer's semantic inference: ``score[k, x] = sum_q softmax(class_q)[k] * sigmoid(mask_q[x])``.

    The no-object column is dropped after the softmax over K + 1. Computed in float32.

    Args:
        pred_logits: ``(N, Q, K+1)`` class logits.
        pred_masks: ``(N, Q, H, W)`` mask logits.

    Returns:
        ``(N, K, H, W)`` non-negative scores (not normalised over K).
    """
    if pred_logits.ndim != 3 or pred_masks.ndim != 4 or pred_logits.shape[:2] != pred_masks.shape[:2]:
        raise ValueError(
            f"expected pred_logits (N, Q, K+1) and pred_masks (N, Q, H, W) with equal N, Q; got "
            f"{tuple(pred_logits.shape)} and {tuple(pred_masks.shape)}"
        )
    with torch.autocast(pred_masks.device.type, enabled=False):  # float32 under autocast too
        probs = pred_logits.float().softmax(dim=-1)[..., :-1]
        return torch.einsum("nqk,nqhw->nkhw", probs, pred_masks.float().sigmoid())


class SemanticWrapper(nn.Module):
    """Expose a mask-classification network as a MONAI-style ``(B, C, H, W, D) -> (B, K, H, W, D)`` network.

    MONAI's ``SlidingWindowInferer`` (roi = ``(S, S, D)``), ``DiceMetric`` and post-transforms then use it
    unchanged. The wrapped network returns per-slice ``pred_logits``/``pred_masks`` with slices folded into
    the batch as ``n = b * D + d``.

    Args:
        network: e.g. :class:`masksam.networks.MaskSAM`.
        normalize: divide the scores by their sum over classes so that they are probabilities (background
            included), as Auto3DSeg's ensembling expects.
        eps: floor of that sum.
    """

    def __init__(self, network: nn.Module, normalize: bool = False, eps: float = 1e-6) -> None:
        super().__init__()
        self.network = network
        self.normalize = normalize
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, C, H, W, D)`` -> class scores ``(B, K, H, W, D)`` (float32)."""
        b, d = x.shape[0], x.shape[-1]
        out = self.network(x)
        scores = semantic_scores(out["pred_logits"], out["pred_masks"])  # (B*D, K, H, W)
        if self.normalize:
            total = scores.sum(dim=1, keepdim=True).clamp_min(self.eps)
            scores = scores / total
        return scores.reshape(b, d, *scores.shape[1:]).permute(0, 2, 3, 4, 1)
