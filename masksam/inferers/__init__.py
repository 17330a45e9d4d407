# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Volume inference, one module per kind of network output, each usable from bundle configs.

- mask classification (MaskSAM: class logits and mask logits per query) -> per-voxel class scores:
  :mod:`~masksam.inferers.semantic` (:class:`SemanticWrapper` makes the network a ``(B, C, H, W, D) ->
  (B, K, H, W, D)`` network for MONAI's ``SlidingWindowInferer``, ``DiceMetric`` and post-transforms);
- slice-window semantic maps (MA-SAM: K-class logits per slice of a T-slice window) and prompt-driven
  binary masks (Med-SA, SAM-UNet: one mask per prompt, with an interactive predictor that encodes a volume
  once) come with those methods, as MONAI ``Inferer`` subclasses beside this one.
"""

from __future__ import annotations

from masksam.inferers.semantic import SemanticWrapper, semantic_scores

__all__ = ["SemanticWrapper", "semantic_scores"]
