# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""SAM-family backbones: builders, checkpoint loading, fused attention, slice-stack encoders."""

from __future__ import annotations

from masksam.backbones.attention import decomposed_rel_pos_bias, sam_attention
from masksam.backbones.encoder import AdaptedBlock, SamViTEncoder3D, TinyViTEncoder3D
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
)

__all__ = [
    "decomposed_rel_pos_bias",
    "sam_attention",
    "AdaptedBlock",
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
]
