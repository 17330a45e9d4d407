# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Volume inference, one module per kind of network output, each usable from bundle configs.

- mask classification (MaskSAM: class logits and mask logits per query) -> per-voxel class scores:
  :mod:`~masksam.inferers.semantic` (:class:`SemanticWrapper` makes the network a ``(B, C, H, W, D) ->
  (B, K, H, W, D)`` network for MONAI's ``SlidingWindowInferer``, ``DiceMetric`` and post-transforms);
- semantic logits of T-slice stacks (MA-SAM) -> class probabilities of whole volumes:
  :mod:`~masksam.inferers.slice_window` (:class:`SliceWindowInferer`, a MONAI ``Inferer``);
- mirroring test-time augmentation around the semantic ones (nnU-Net's): :mod:`~masksam.inferers.mirror`
  (:class:`MirroredInferer`);
- prompt-driven binary masks (Med-SA, SAM-UNet: one mask per prompt set): :mod:`~masksam.inferers.prompted`
  (:class:`PromptedVolumePredictor`, the interactive API that encodes a volume once; :class:`PromptedInferer`;
  :class:`IterativeClickInferer` for training with correction clicks).
"""

from __future__ import annotations

from masksam.inferers.mirror import MirroredInferer, mirror_combinations
from masksam.inferers.prompted import IterativeClickInferer, PromptedInferer, PromptedVolumePredictor
from masksam.inferers.semantic import SemanticWrapper, semantic_scores
from masksam.inferers.slice_window import SliceWindowInferer

__all__ = [
    "IterativeClickInferer",
    "MirroredInferer",
    "PromptedInferer",
    "PromptedVolumePredictor",
    "SemanticWrapper",
    "SliceWindowInferer",
    "mirror_combinations",
    "semantic_scores",
]
