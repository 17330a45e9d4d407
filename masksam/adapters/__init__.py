# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Adapters that let a frozen 2D SAM learn a task and the third dimension."""

from __future__ import annotations

from masksam.adapters.base import Adapter, check_num_slices, fold_slices, unfold_slices
from masksam.adapters.block import BlockAdapterFactory, BlockAdapters, DecoderAdapters
from masksam.adapters.bottleneck import BottleneckAdapter
from masksam.adapters.depth_conv import DepthConvAdapter3D
from masksam.adapters.depth_mlp import DepthMLPAdapter3D
from masksam.adapters.embedding import SliceDenseEmbedding, SliceEmbedding
from masksam.adapters.hyper_prompt import HyperPromptingAdapter, PromptConditionedAdapter
from masksam.adapters.low_rank import FacTFactors, FacTQKV, LoRAQKV
from masksam.adapters.presets import (
    lora_block_adapters,
    ma_sam_block_adapters,
    masksam_block_adapters,
    masksam_decoder_adapters,
    med_sa_block_adapters,
    med_sa_decoder_adapters,
)
from masksam.adapters.sd_trans import SpaceDepthTranspose, depth_grid
from masksam.adapters.slice_conv import SliceConvAdapter3D
from masksam.adapters.trainable import count_parameters, format_parameter_counts, mark_trainable

__all__ = [
    "Adapter",
    "check_num_slices",
    "fold_slices",
    "unfold_slices",
    "BlockAdapterFactory",
    "BlockAdapters",
    "DecoderAdapters",
    "BottleneckAdapter",
    "DepthConvAdapter3D",
    "DepthMLPAdapter3D",
    "SliceEmbedding",
    "SliceDenseEmbedding",
    "HyperPromptingAdapter",
    "PromptConditionedAdapter",
    "FacTFactors",
    "FacTQKV",
    "LoRAQKV",
    "SpaceDepthTranspose",
    "depth_grid",
    "SliceConvAdapter3D",
    "lora_block_adapters",
    "ma_sam_block_adapters",
    "masksam_block_adapters",
    "masksam_decoder_adapters",
    "med_sa_block_adapters",
    "med_sa_decoder_adapters",
    "count_parameters",
    "format_parameter_counts",
    "mark_trainable",
]
