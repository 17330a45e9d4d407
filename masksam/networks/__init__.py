# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Networks: one assembly per method, plus their shared parts."""

from __future__ import annotations

from masksam.networks.blocks import ChannelsLastInstanceNorm3d, PatchConvTranspose3d, is_channels_last_3d
from masksam.networks.mask_decoder import ClassHead, DecoderLayerAdapters, MaskClassificationDecoder, MaskHead3D
from masksam.networks.masksam import MASKSAM_OUTPUT_KEYS, MaskSAM, Stem3D, build_masksam
from masksam.networks.prompt_generator import ConvBlock3D, PromptGenerator3D, learned_box

__all__ = [
    "ChannelsLastInstanceNorm3d",
    "ClassHead",
    "DecoderLayerAdapters",
    "MaskClassificationDecoder",
    "MaskHead3D",
    "MASKSAM_OUTPUT_KEYS",
    "MaskSAM",
    "PatchConvTranspose3d",
    "is_channels_last_3d",
    "Stem3D",
    "build_masksam",
    "ConvBlock3D",
    "PromptGenerator3D",
    "learned_box",
]
