# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Per-method adapter sets for a SAM ViT of width ``dim`` and ``depth`` blocks (the only place with their sizes)."""

from __future__ import annotations

from masksam.adapters.block import BlockAdapters
from masksam.adapters.bottleneck import BottleneckAdapter
from masksam.adapters.depth_conv import DepthConvAdapter3D
from masksam.adapters.low_rank import FacTFactors, FacTQKV, LoRAQKV
from masksam.adapters.sd_trans import SpaceDepthTranspose
from masksam.adapters.slice_conv import SliceConvAdapter3D

__all__ = ["masksam_block_adapters", "ma_sam_block_adapters", "med_sa_block_adapters", "lora_block_adapters"]


def _hidden(dim: int, hidden_dim: int | None, ratio: float) -> int:
    return hidden_dim if hidden_dim is not None else max(1, int(dim * ratio))


def masksam_block_adapters(
    dim: int, depth: int, hidden_dim: int | None = None, hidden_ratio: float = 0.25, kernel_size: int = 3
) -> list[BlockAdapters]:
    """MaskSAM: a 3D depth-conv adapter on the attention output and one (x0.5) beside the MLP, per block.

    The research code uses ``hidden = dim/4`` (53 M parameters for ViT-H); pass a smaller ``hidden_dim``
    to approach the paper's budget.
    """
    c = _hidden(dim, hidden_dim, hidden_ratio)
    return [
        BlockAdapters(
            post_attn=DepthConvAdapter3D(dim, c, kernel_size),
            parallel_mlp=DepthConvAdapter3D(dim, c, kernel_size),
            parallel_mlp_scale=0.5,
        )
        for _ in range(depth)
    ]


def ma_sam_block_adapters(
    dim: int, depth: int, rank: int = 32, hidden_dim: int = 384, kernel_size: int = 3, fact_dropout: float = 0.1
) -> list[BlockAdapters]:
    """MA-SAM: FacT-TT on q/v (factors shared by all blocks) and 3D adapters before attention and before the MLP."""
    factors = FacTFactors(dim, rank)
    return [
        BlockAdapters(
            pre_attn=SliceConvAdapter3D(dim, hidden_dim, kernel_size),
            qkv=FacTQKV(factors, dropout=fact_dropout),
            pre_mlp=SliceConvAdapter3D(dim, hidden_dim, kernel_size),
        )
        for _ in range(depth)
    ]


def med_sa_block_adapters(
    dim: int, depth: int, hidden_dim: int | None = None, hidden_ratio: float = 0.25, depth_attention: bool = True
) -> list[BlockAdapters]:
    """Med-SA: space adapter on the attention output, MLP adapter (x0.5) in parallel, optional SD-Trans depth branch."""
    c = _hidden(dim, hidden_dim, hidden_ratio)
    return [
        BlockAdapters(
            post_attn=BottleneckAdapter(dim, c),
            depth_attn=SpaceDepthTranspose(dim, c) if depth_attention else None,
            parallel_mlp=BottleneckAdapter(dim, c),
            parallel_mlp_scale=0.5,
        )
        for _ in range(depth)
    ]


def lora_block_adapters(dim: int, depth: int, rank: int = 4, alpha: float | None = None) -> list[BlockAdapters]:
    """LoRA on q and v of every block (SAMed-style)."""
    return [BlockAdapters(qkv=LoRAQKV(dim, rank, alpha)) for _ in range(depth)]
