# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""SAM-family backbones: builders, checkpoint loading, SDPA attention, slice-stack encoders with adapter slots."""

from __future__ import annotations

from masksam.backbones.attention import MAX_BIAS_ELEMENTS, decomposed_rel_pos_bias, sam_attention
from masksam.backbones.encoder import (
    AdaptedBlock,
    AdaptedTinyViTBlock,
    AdaptedViTBlock,
    SamViTEncoder3D,
    TinyViTEncoder3D,
    build_encoder3d,
)
from masksam.backbones.lite_medsam import LITE_MEDSAM_SHA256, build_lite_medsam, lite_medsam_checkpoint_path
from masksam.backbones.sam import (
    SAM_PRESETS,
    CheckpointError,
    LoadReport,
    SamPreset,
    build_sam,
    global_attn_indexes,
    load_sam_checkpoint,
    read_state_dict,
    resize_pos_embed,
    resize_rel_pos,
    sam_prompt_parts,
)

__all__ = [
    "MAX_BIAS_ELEMENTS",
    "decomposed_rel_pos_bias",
    "sam_attention",
    "AdaptedBlock",
    "AdaptedTinyViTBlock",
    "AdaptedViTBlock",
    "build_encoder3d",
    "SamViTEncoder3D",
    "TinyViTEncoder3D",
    "LITE_MEDSAM_SHA256",
    "build_lite_medsam",
    "lite_medsam_checkpoint_path",
    "SAM_PRESETS",
    "CheckpointError",
    "LoadReport",
    "SamPreset",
    "build_sam",
    "global_attn_indexes",
    "load_sam_checkpoint",
    "read_state_dict",
    "resize_pos_embed",
    "resize_rel_pos",
    "sam_prompt_parts",
]
