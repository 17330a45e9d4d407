# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Per-method adapter sets (the only place with their sizes).

Encoder presets return a factory (:data:`~masksam.adapters.BlockAdapterFactory`) that
:func:`masksam.backbones.build_encoder3d` calls once with the token width of every transformer block, so
the same preset fills SAM's ViTs (one width) and LiteMedSAM's TinyViT (a width per stage). Decoder
presets return the :class:`~masksam.networks.mask_decoder.DecoderAdapters` of each two-way layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from masksam.adapters.block import BlockAdapterFactory, BlockAdapters, DecoderAdapters
from masksam.adapters.bottleneck import BottleneckAdapter
from masksam.adapters.depth_conv import DepthConvAdapter3D
from masksam.adapters.depth_mlp import DepthMLPAdapter3D
from masksam.adapters.hyper_prompt import HyperPromptingAdapter
from masksam.adapters.low_rank import FacTFactors, FacTQKV, LoRAQKV
from masksam.adapters.sd_trans import SpaceDepthTranspose
from masksam.adapters.slice_conv import SliceConvAdapter3D

__all__ = [
    "lora_block_adapters",
    "ma_sam_block_adapters",
    "masksam_block_adapters",
    "masksam_decoder_adapters",
    "med_sa_block_adapters",
    "med_sa_decoder_adapters",
]


def _per_block(make: Callable[[int], BlockAdapters]) -> BlockAdapterFactory:
    """A factory making each block's adapters from its width alone (nothing shared between blocks)."""

    def build(dims: Sequence[int]) -> list[BlockAdapters]:
        return [make(dim) for dim in dims]

    return build


def _hidden(dim: int, hidden_dim: int | None, ratio: float) -> int:
    """``hidden_dim`` (at most ``dim``) when given, else ``dim * ratio``."""
    return min(hidden_dim, dim) if hidden_dim is not None else max(1, int(dim * ratio))


def masksam_block_adapters(
    hidden_dim: int | None = None, hidden_ratio: float = 0.25, kernel_size: int = 3
) -> BlockAdapterFactory:
    """MaskSAM: a 3D depth-conv adapter on the attention output and one (x0.5) beside the MLP, per block.

    The research code uses ``hidden = dim/4`` (53 M parameters for ViT-H); pass a smaller ``hidden_dim``
    to approach the paper's budget.
    """

    def make(dim: int) -> BlockAdapters:
        c = _hidden(dim, hidden_dim, hidden_ratio)
        return BlockAdapters(
            post_attn=DepthConvAdapter3D(dim, c, kernel_size),
            parallel_mlp=DepthConvAdapter3D(dim, c, kernel_size),
            parallel_mlp_scale=0.5,
        )

    return _per_block(make)


def ma_sam_block_adapters(
    rank: int = 32, hidden_dim: int = 384, kernel_size: int = 3, fact_dropout: float = 0.1
) -> BlockAdapterFactory:
    """MA-SAM: FacT-TT on q/v and 3D adapters before attention and before the MLP of every block.

    The FacT factors ``U``, ``V`` are shared by the blocks of one width of one encoder (all blocks of a ViT;
    each stage of TinyViT); each call of the factory makes new ones.
    """

    def build(dims: Sequence[int]) -> list[BlockAdapters]:
        factors = {dim: FacTFactors(dim, rank) for dim in dict.fromkeys(dims)}
        return [
            BlockAdapters(
                pre_attn=SliceConvAdapter3D(dim, hidden_dim, kernel_size),
                qkv=FacTQKV(factors[dim], dropout=fact_dropout),
                pre_mlp=SliceConvAdapter3D(dim, hidden_dim, kernel_size),
            )
            for dim in dims
        ]

    return build


def med_sa_block_adapters(
    hidden_dim: int | None = None, hidden_ratio: float = 0.25, depth_attention: bool = True
) -> BlockAdapterFactory:
    """Med-SA: space adapter on the attention output, MLP adapter (x0.5) in parallel, optional SD-Trans depth branch."""

    def make(dim: int) -> BlockAdapters:
        c = _hidden(dim, hidden_dim, hidden_ratio)
        return BlockAdapters(
            post_attn=BottleneckAdapter(dim, c),
            depth_attn=SpaceDepthTranspose(dim, c) if depth_attention else None,
            parallel_mlp=BottleneckAdapter(dim, c),
            parallel_mlp_scale=0.5,
        )

    return _per_block(make)


def lora_block_adapters(rank: int = 4, alpha: float | None = None) -> BlockAdapterFactory:
    """LoRA on q and v of every block (SAMed-style)."""

    def make(dim: int) -> BlockAdapters:
        return BlockAdapters(qkv=LoRAQKV(dim, rank, alpha))

    return _per_block(make)


def masksam_decoder_adapters(
    dim: int, hidden_dim: int, num_slices: int, depth: int, depth_ratio: int = 4, mlp_scale: float = 0.5
) -> tuple[list[DecoderAdapters], nn.Module]:
    """MaskSAM's decoder adapters: per two-way layer, depth-MLP adapters on the token self-attention and
    token-to-image outputs and beside the token MLP (x ``mlp_scale``), a depth-conv adapter on the
    image-to-token output; a depth-MLP adapter on the final attention.

    Returns:
        ``(layer_adapters, final_adapter)`` for :class:`~masksam.networks.AdaptedTwoWayTransformer`.
    """

    def mlp() -> DepthMLPAdapter3D:
        return DepthMLPAdapter3D(dim, hidden_dim, num_slices, depth_ratio)

    layers = [
        DecoderAdapters(
            self_attn=mlp(),
            token_to_image=mlp(),
            mlp=mlp(),
            image_to_token=DepthConvAdapter3D(dim, hidden_dim),
            mlp_scale=mlp_scale,
        )
        for _ in range(depth)
    ]
    return layers, mlp()


def med_sa_decoder_adapters(
    dim: int, hidden_dim: int, depth: int, hyper_hidden_dim: int = 64, mlp_scale: float = 0.5
) -> list[DecoderAdapters]:
    """Med-SA's decoder adapters, three per two-way layer (paper): the Hyper-Prompting adapter on the
    token-to-image attention output, a bottleneck adapter beside the token MLP (x ``mlp_scale``, as in the
    encoder) and one on the image-to-token attention output.

    Returns:
        ``layer_adapters`` for :class:`~masksam.networks.AdaptedTwoWayTransformer` (no final adapter).
    """
    return [
        DecoderAdapters(
            token_to_image=HyperPromptingAdapter(dim, hidden_dim, hyper_hidden_dim=hyper_hidden_dim),
            mlp=BottleneckAdapter(dim, hidden_dim),
            image_to_token=BottleneckAdapter(dim, hidden_dim),
            mlp_scale=mlp_scale,
        )
        for _ in range(depth)
    ]
