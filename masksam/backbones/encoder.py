# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""SAM image encoders applied to stacks of slices, with adapters composed into their blocks.

:class:`AdaptedBlock` receives a finished ``segment_anything`` ViT block and the adapters of that block
(:class:`BlockAdapters`) and runs them around the frozen parts; :class:`SamViTEncoder3D` does the same for
the whole ViT. Nothing is reassigned inside ``segment_anything`` modules, and the frozen weights keep
their own modules (and so their checkpoint keys). Attention runs through SDPA
(:func:`masksam.backbones.attention.sam_attention`).

Layout: inputs ``(B*D, 3, S, S)`` with the D slices of a stack consecutive; tokens channels-last
``(B*D, h, w, C)``; outputs channels-first.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from segment_anything.modeling.common import MLPBlock
from segment_anything.modeling.image_encoder import Block, ImageEncoderViT, window_partition, window_unpartition
from torch import nn

from masksam.adapters.base import check_num_slices
from masksam.adapters.block import BlockAdapters
from masksam.backbones.attention import sam_attention
from masksam.backbones.checkpointing import TEMPORARY_ELEMENTS, map_chunks, may_reuse_outputs, maybe_checkpoint

__all__ = ["AdaptedBlock", "ENCODER_CHUNK_ELEMENTS", "SamViTEncoder3D", "TinyViTEncoder3D"]

#: Without autograd, the attention of an encoder block runs on groups of images whose qkv projection has
#: at most this many elements, and its MLP on blocks of token rows whose hidden activations have at most
#: this many.
ENCODER_CHUNK_ELEMENTS = TEMPORARY_ELEMENTS


def _residual(x: torch.Tensor, branch: torch.Tensor, reuse: bool) -> torch.Tensor:
    """``x + branch``, written into ``branch`` when allowed and the sum keeps its dtype and shape.

    Under autocast the branch may be bf16/fp16 while the residual stream stays float32: then a new tensor.
    """
    if reuse and branch.shape == x.shape and torch.result_type(x, branch) == branch.dtype:
        return branch.add_(x)
    return x + branch


class AdaptedBlock(nn.Module):
    """A frozen ``segment_anything`` ViT block with adapters around it.

    Every slice-aware adapter sees the full, un-windowed ``(B*D, h, w, C)`` grid: window partitioning is
    confined to the frozen attention itself.
    """

    def __init__(self, block: Block, adapters: BlockAdapters | None = None) -> None:
        super().__init__()
        self.block = block
        self.adapters = adapters if adapters is not None else BlockAdapters()

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return self._attention_images(x)
        # Without autograd, groups of images: the qkv projection and window copies of each group stay
        # under ENCODER_CHUNK_ELEMENTS.
        _, h, w, c = x.shape
        return map_chunks(self._attention_images, x, max(1, ENCODER_CHUNK_ELEMENTS // (3 * h * w * c)))

    def _attention_images(self, x: torch.Tensor) -> torch.Tensor:
        window = self.block.window_size
        if window > 0:
            h, w = x.shape[1:3]
            x, pad_hw = window_partition(x, window)
        x = sam_attention(self.block.attn, x, self.adapters.qkv)
        if window > 0:
            x = window_unpartition(x, window, pad_hw, (h, w))
        return x

    def _mlp(self, x: torch.Tensor, reuse: bool) -> torch.Tensor:
        mlp = self.block.mlp
        if not (reuse and type(mlp) is MLPBlock and type(mlp.act) is nn.GELU):
            return mlp(x)

        # No autograd, no hooks: blocks of token rows, GELU in place; the 4C-wide hidden activations never
        # exist for all tokens at once.
        def rows(tokens: torch.Tensor) -> torch.Tensor:
            hidden = mlp.lin1(tokens)
            torch.ops.aten.gelu_(hidden, approximate=mlp.act.approximate)
            return mlp.lin2(hidden)

        out = map_chunks(rows, x.reshape(-1, x.shape[-1]), max(1, ENCODER_CHUNK_ELEMENTS // mlp.lin1.out_features))
        return out.view(*x.shape[:-1], -1)

    def forward(self, x: torch.Tensor, num_slices: int) -> torch.Tensor:
        """``x (B*D, h, w, C)`` channels-last -> same shape (``x`` itself is never modified)."""
        ad = self.adapters
        # Without autograd (and hooks) the residual sums go into the branch outputs, which this block has
        # just allocated, and GELU works in place: three fewer large tensors per block (on CPU each new
        # one costs page faults; docs/performance.md, "The memory allocator").
        reuse = may_reuse_outputs(self.block.attn.proj, *self.block.mlp.modules())
        if ad.pre_attn is not None:
            x = x + ad.pre_attn(x, num_slices)
        normed = self.block.norm1(x)
        a = self._attention(normed)
        if ad.post_attn is not None:
            a = a + ad.post_attn(a, num_slices)
        if ad.depth_attn is not None:
            a = a + ad.depth_attn(normed, partial(sam_attention, self.block.attn), num_slices)
        x = _residual(x, a, reuse)
        if ad.pre_mlp is not None:
            x = x + ad.pre_mlp(x, num_slices)
        normed = self.block.norm2(x)
        m = self._mlp(normed, reuse)
        x = _residual(x, m, reuse)
        if ad.parallel_mlp is not None:
            x = x + ad.parallel_mlp_scale * ad.parallel_mlp(normed, num_slices)
        return x


class SamViTEncoder3D(nn.Module):
    """A SAM ViT image encoder over stacks of slices, returning multi-level features.

    Args:
        encoder: a finished ``segment_anything`` ``ImageEncoderViT`` (e.g. ``build_sam(...).image_encoder``).
        block_adapters: one :class:`BlockAdapters` (or None) per block; default none.
        slice_embedding: optional module adding a per-slice embedding to the tokens after the position
            embedding (:class:`masksam.adapters.SliceEmbedding`).
        out_indices: blocks whose outputs are returned besides the neck; default the global-attention blocks.
        gradient_checkpointing: recompute block activations in the backward pass (saves memory in training).

    Attributes:
        feature_channels, feature_strides: channels and strides of the returned features, neck last.
    """

    def __init__(
        self,
        encoder: ImageEncoderViT,
        block_adapters: Sequence[BlockAdapters | None] | None = None,
        slice_embedding: nn.Module | None = None,
        out_indices: Sequence[int] | None = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        depth = len(encoder.blocks)
        if block_adapters is None:
            block_adapters = [None] * depth
        if len(block_adapters) != depth:
            raise ValueError(f"got {len(block_adapters)} block adapters for an encoder of {depth} blocks")
        if out_indices is None:
            out_indices = [i for i, blk in enumerate(encoder.blocks) if blk.window_size == 0]
        if any(not 0 <= i < depth for i in out_indices):
            raise ValueError(f"out_indices {list(out_indices)} outside 0..{depth - 1}")
        self.patch_embed = encoder.patch_embed
        self.pos_embed = encoder.pos_embed
        self.blocks = nn.ModuleList(AdaptedBlock(b, a) for b, a in zip(encoder.blocks, block_adapters, strict=True))
        self.neck = encoder.neck
        self.slice_embedding = slice_embedding
        self.out_indices = tuple(out_indices)
        self.gradient_checkpointing = gradient_checkpointing
        self.img_size = encoder.img_size
        patch = encoder.patch_embed.proj.kernel_size[0]
        width = encoder.patch_embed.proj.out_channels
        self.feature_channels = [width] * len(self.out_indices) + [encoder.neck[0].out_channels]
        self.feature_strides = [patch] * (len(self.out_indices) + 1)

    def forward(self, x: torch.Tensor, num_slices: int) -> list[torch.Tensor]:
        """``x (B*D, 3, S, S)`` -> ``[block outputs (B*D, C, S/16, S/16)..., neck (B*D, 256, S/16, S/16)]``."""
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-1] != self.img_size or x.shape[-2] != self.img_size:
            raise ValueError(
                f"expected (B*D, 3, {self.img_size}, {self.img_size}) slices for this encoder, got {tuple(x.shape)}"
            )
        check_num_slices(x.shape[0], num_slices)
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        if self.slice_embedding is not None:
            x = self.slice_embedding(x)
        feats: list[torch.Tensor] = []
        for i, blk in enumerate(self.blocks):
            x = maybe_checkpoint(self.gradient_checkpointing, blk, x, num_slices)
            if i in self.out_indices:
                feats.append(x.permute(0, 3, 1, 2))
        feats.append(self.neck(x.permute(0, 3, 1, 2)))
        return feats


class TinyViTEncoder3D(nn.Module):
    """LiteMedSAM's TinyViT encoder over stacks of slices, with an adapter after each attention block.

    TinyViT's blocks differ from SAM's ViT blocks (local convolution between attention and MLP), so the
    adapters (``(tokens, num_slices) -> delta`` modules such as :class:`masksam.adapters.DepthConvAdapter3D`)
    act on each block's output of stages 1-3; stage 0 (MBConv at full resolution) stays as it is.

    Args:
        encoder: the image encoder of :func:`masksam.backbones.build_lite_medsam`.
        stage_adapters: per attention stage (3), a sequence of adapters (one per block) or None.
        slice_embedding: optional per-slice embedding added to the stage-0 output tokens (128 channels).
        gradient_checkpointing: recompute stage activations in the backward pass.
    """

    def __init__(
        self,
        encoder: nn.Module,
        stage_adapters: Sequence[Sequence[nn.Module] | None] | None = None,
        slice_embedding: nn.Module | None = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        stages = list(encoder.layers)[1:]
        if stage_adapters is None:
            stage_adapters = [None] * len(stages)
        if len(stage_adapters) != len(stages):
            raise ValueError(
                f"got adapters for {len(stage_adapters)} stages, TinyViT has {len(stages)} attention stages"
            )
        self.stage_adapters = nn.ModuleList()
        for stage, adapters in zip(stages, stage_adapters, strict=True):
            adapters = list(adapters) if adapters is not None else []
            if adapters and len(adapters) != len(stage.blocks):
                raise ValueError(f"a stage of {len(stage.blocks)} blocks got {len(adapters)} adapters")
            self.stage_adapters.append(nn.ModuleList(adapters))
        self.slice_embedding = slice_embedding
        self.gradient_checkpointing = gradient_checkpointing
        self.img_size = encoder.img_size
        self.feature_channels = [128, 160, 320, 320, 256]
        self.feature_strides = [2, 4, 4, 4, 4]

    @staticmethod
    def _grid(tokens: torch.Tensor) -> torch.Tensor:
        n, length, c = tokens.shape
        side = int(round(length**0.5))
        return tokens.reshape(n, side, side, c)

    def _run_stage(self, x: torch.Tensor, stage: nn.Module, adapters: nn.ModuleList, num_slices: int) -> torch.Tensor:
        for i, blk in enumerate(stage.blocks):
            x = blk(x)
            if len(adapters):
                x = x + adapters[i](self._grid(x), num_slices).reshape(x.shape)
        return stage.downsample(x) if stage.downsample is not None else x

    def forward(self, x: torch.Tensor, num_slices: int) -> list[torch.Tensor]:
        """``x (B*D, 3, S, S)`` -> ``[stage outputs..., neck (B*D, 256, S/4, S/4)]``, channels-first."""
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-1] != self.img_size or x.shape[-2] != self.img_size:
            raise ValueError(
                f"expected (B*D, 3, {self.img_size}, {self.img_size}) slices for this encoder, got {tuple(x.shape)}"
            )
        check_num_slices(x.shape[0], num_slices)
        x = self.encoder.layers[0](self.encoder.patch_embed(x))
        if self.slice_embedding is not None:
            x = self.slice_embedding(x)
        feats = [self._grid(x).permute(0, 3, 1, 2)]
        for stage, adapters in zip(list(self.encoder.layers)[1:], self.stage_adapters, strict=True):
            x = maybe_checkpoint(self.gradient_checkpointing, self._run_stage, x, stage, adapters, num_slices)
            feats.append(self._grid(x).permute(0, 3, 1, 2))
        feats.append(self.encoder.neck(feats[-1]))
        return feats
