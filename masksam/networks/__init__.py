# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Networks: one assembly per method, plus their shared parts.

Shared: :mod:`~masksam.networks.mask_decoder` (SAM's two-way decoder with adapter slots) and
:mod:`~masksam.networks.settings` (build settings that travel with the weights). Per method:
:mod:`~masksam.networks.masksam` with its :mod:`~masksam.networks.prompt_generator`;
:mod:`~masksam.networks.ma_sam`; :mod:`~masksam.networks.med_sa`; :mod:`~masksam.networks.sam_unet` with its
:mod:`~masksam.networks.conv_branch`.
"""

from __future__ import annotations

from masksam.networks.conv_branch import CNN_BRANCHES, Reshaper, ResNetBranch, fusion_bridge, log2_ratio
from masksam.networks.ma_sam import MASAM, SemanticMaskDecoder, build_ma_sam, progressive_upscaling
from masksam.networks.mask_decoder import AdaptedTwoWayTransformer, hypernetwork_masks
from masksam.networks.masksam import (
    MASKSAM_OUTPUT_KEYS,
    ClassHead,
    MaskClassificationDecoder,
    MaskHead3D,
    MaskSAM,
    Stem3D,
    build_masksam,
)
from masksam.networks.med_sa import (
    NO_PROMPT_LOGIT,
    MedSA,
    PromptedMaskDecoder,
    PromptedSliceNetwork,
    build_med_sa,
    embed_sparse_prompts,
    prompted_slice_inputs,
)
from masksam.networks.prompt_generator import PromptGenerator3D, conv_block, learned_box
from masksam.networks.sam_unet import FUSED_FOLD, SamUNet, SamUNetDecoder, build_sam_unet
from masksam.networks.settings import (
    EXTRA_STATE_SUFFIX,
    RecordsBuildSettings,
    build_settings_differences,
    decode_build_settings,
    records_build_settings,
)

__all__ = [
    "CNN_BRANCHES",
    "FUSED_FOLD",
    "ResNetBranch",
    "Reshaper",
    "SamUNet",
    "SamUNetDecoder",
    "build_sam_unet",
    "fusion_bridge",
    "log2_ratio",
    "embed_sparse_prompts",
    "prompted_slice_inputs",
    "PromptedSliceNetwork",
    "build_med_sa",
    "PromptedMaskDecoder",
    "MedSA",
    "NO_PROMPT_LOGIT",
    "AdaptedTwoWayTransformer",
    "ClassHead",
    "EXTRA_STATE_SUFFIX",
    "MASAM",
    "MASKSAM_OUTPUT_KEYS",
    "MaskClassificationDecoder",
    "MaskHead3D",
    "MaskSAM",
    "PromptGenerator3D",
    "RecordsBuildSettings",
    "SemanticMaskDecoder",
    "Stem3D",
    "build_ma_sam",
    "build_masksam",
    "build_settings_differences",
    "conv_block",
    "decode_build_settings",
    "hypernetwork_masks",
    "learned_box",
    "progressive_upscaling",
    "records_build_settings",
]
