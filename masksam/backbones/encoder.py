# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""SAM image encoders applied to stacks of slices, with adapters composed into their blocks.

Both encoder families share one adapter contract, :class:`~masksam.adapters.BlockAdapters`: an
:class:`AdaptedBlock` receives a finished transformer block (SAM's ViT ``Block`` or LiteMedSAM's
``TinyViTBlock``) and the adapters of that block, and runs them around the frozen parts. Nothing is
reassigned inside the wrapped modules, and the frozen weights keep their own modules (and so their
checkpoint keys). :func:`build_encoder3d` assembles either family from a built image encoder.

Layout: inputs ``(B*D, 3, S, S)`` with the D slices of a stack consecutive (``n = b * D + d``); inside a
block, tokens are channels-last grids ``(B*D, h, w, C)``, never window-partitioned where a slice-aware
adapter sees them (only the per-token ``qkv`` update runs inside the windowed attention); returned features
are channels-first ``(B*D, C, h, w)``.

Injection: both families take ``forward(x, num_slices, injections=None)`` with one optional channels-last grid
per returned feature level (``injections[k]`` has the shape of feature ``k``, channels last), added to the token
grid where that level is formed: in a ViT before the block ``out_indices[k]`` runs (SAM's global-attention
blocks by default), in TinyViT to the output of stage ``out_indices[k]`` (which the next stage receives). A
parallel branch (SAM-UNet's CNN) feeds the frozen encoder this way; without injections nothing changes.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Block, ImageEncoderViT, window_partition, window_unpartition
from torch import nn

from masksam.adapters.base import check_num_slices
from masksam.adapters.block import BlockAdapterFactory, BlockAdapters
from masksam.adapters.embedding import SliceEmbedding
from masksam.backbones.attention import MAX_BIAS_ELEMENTS, sam_attention
from masksam.backbones.checkpointing import maybe_checkpoint

__all__ = [
    "AdaptedBlock",
    "AdaptedTinyViTBlock",
    "AdaptedViTBlock",
    "SamViTEncoder3D",
    "TinyViTEncoder3D",
    "build_encoder3d",
]


class AdaptedBlock(nn.Module, ABC):
    """A frozen transformer block with :class:`BlockAdapters` around it (the contract both families share).

    ``forward(x, num_slices)`` on channels-last ``(B*D, h, w, C)`` tokens runs::

        x = x + pre_attn(x)
        a = attention(x);  a = a + post_attn(a);  a = a + depth_attn(norm1(x), attend)
        x = between(x + a)                               # TinyViT's local convolution; ViT: nothing
        x = x + pre_mlp(x)
        x = x + mlp(norm2(x)) + parallel_mlp_scale * parallel_mlp(norm2(x))

    where each adapter term is present only when its slot is filled, every adapter but the per-token ``qkv``
    update (which runs inside the attention, on its windows) sees the full, un-windowed grid, and ``attend``
    is the block's frozen attention on normalised ``(N, a, b, C)`` grids. Subclasses supply the family's parts.
    """

    def __init__(self, block: nn.Module, adapters: BlockAdapters | None = None) -> None:
        super().__init__()
        self.block = block
        self.adapters = adapters if adapters is not None else BlockAdapters()

    @abstractmethod
    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The attention branch (windowed where the block is) of the residual stream ``x (N, h, w, C)``."""
        raise NotImplementedError

    @abstractmethod
    def norm1(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @abstractmethod
    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen attention on a normalised ``(N, a, b, C)`` grid, unwindowed (Space-Depth Transpose)."""
        raise NotImplementedError

    def between(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @abstractmethod
    def norm2(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @abstractmethod
    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP on normalised tokens."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, num_slices: int) -> torch.Tensor:
        """``x (B*D, h, w, C)`` channels-last -> same shape."""
        ad = self.adapters
        if ad.pre_attn is not None:
            x = x + ad.pre_attn(x, num_slices)
        a = self.attention(x)
        if ad.post_attn is not None:
            a = a + ad.post_attn(a, num_slices)
        if ad.depth_attn is not None:
            a = a + ad.depth_attn(self.norm1(x), self.attend, num_slices)
        x = self.between(x + a)
        if ad.pre_mlp is not None:
            x = x + ad.pre_mlp(x, num_slices)
        normed = self.norm2(x)
        x = x + self.mlp(normed)
        if ad.parallel_mlp is not None:
            x = x + ad.parallel_mlp_scale * ad.parallel_mlp(normed, num_slices)
        return x


class AdaptedViTBlock(AdaptedBlock):
    """SAM's ViT ``Block`` (pre-norm attention with decomposed relative positions, MLP), attention through SDPA.

    Args:
        block: a finished ``segment_anything`` ``Block``.
        adapters: its adapters.
        max_bias_elements: memory bound of the attention's additive-bias form
            (:func:`~masksam.backbones.attention.sam_attention`).
    """

    def __init__(
        self, block: Block, adapters: BlockAdapters | None = None, max_bias_elements: int = MAX_BIAS_ELEMENTS
    ) -> None:
        super().__init__(block, adapters)
        self.max_bias_elements = max_bias_elements

    def norm1(self, x: torch.Tensor) -> torch.Tensor:
        return self.block.norm1(x)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        return sam_attention(self.block.attn, x, self.adapters.qkv, self.max_bias_elements)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        window = self.block.window_size
        if window == 0:
            return self.attend(x)
        h, w = x.shape[1:3]
        windows, pad_hw = window_partition(x, window)
        return window_unpartition(self.attend(windows), window, pad_hw, (h, w))

    def norm2(self, x: torch.Tensor) -> torch.Tensor:
        return self.block.norm2(x)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.block.mlp(x)


def _tiny_vit_bias(attn: nn.Module, a: int, b: int) -> torch.Tensor:
    """TinyViT's attention bias ``(heads, a*b, a*b)`` for an ``a x b`` grid inside its ``r x r`` window.

    TinyViT indexes its learnt biases by the offset ``(|dy|, |dx|)`` between two positions of the window;
    in the order it enumerates them, offset ``(dy, dx)`` has index ``dy * r + dx``.
    """
    r = math.isqrt(len(attn.attention_bias_idxs))  # the window side; len() stays a Python int under torch.jit.trace
    if a == b == r:
        return attn.attention_biases[:, attn.attention_bias_idxs]
    if a > r or b > r:
        raise ValueError(
            f"TinyViT attention of window {r}x{r} cannot attend over a {a}x{b} grid (Space-Depth Transpose lays "
            f"num_slices out as a near-square grid: choose num_slices whose grid fits {r}x{r})"
        )
    ys, xs = torch.meshgrid(torch.arange(a), torch.arange(b), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    index = (ys[:, None] - ys[None, :]).abs() * r + (xs[:, None] - xs[None, :]).abs()
    return attn.attention_biases[:, index.to(attn.attention_biases.device)]


class AdaptedTinyViTBlock(AdaptedBlock):
    """LiteMedSAM's ``TinyViTBlock``: windowed attention with learnt offset biases (norm inside the attention),
    a depthwise local convolution, then the MLP (norm inside the MLP); attention through SDPA.

    A ``qkv`` slot's ``[q | k | v]`` delta is rearranged to TinyViT's per-head ``(q, k, v)`` layout.
    """

    def norm1(self, x: torch.Tensor) -> torch.Tensor:
        return self.block.attn.norm(x)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.block.attn
        n, a, b, c = x.shape
        qkv = attn.qkv(x)
        if self.adapters.qkv is not None:
            delta = self.adapters.qkv(x)  # (N, a, b, 3C) as [q | k | v]
            qkv = qkv + delta.unflatten(-1, (3, attn.num_heads, -1)).transpose(-3, -2).flatten(-3)
        q, k, v = qkv.reshape(n, a * b, attn.num_heads, -1).split(
            [attn.key_dim, attn.key_dim, attn.d], dim=3
        )  # each (N, L, heads, dim)
        bias = _tiny_vit_bias(attn, a, b).to(q.dtype)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=bias, scale=attn.scale
        )
        return attn.proj(out.transpose(1, 2).reshape(n, a, b, attn.dh))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        # TinyViT pads the residual stream with zeros before its attention's own norm: so does this.
        h, w = x.shape[1:3]
        window = self.block.window_size
        windows, pad_hw = window_partition(x, window)
        return window_unpartition(self.attend(self.norm1(windows)), window, pad_hw, (h, w))

    def between(self, x: torch.Tensor) -> torch.Tensor:
        return self.block.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    def norm2(self, x: torch.Tensor) -> torch.Tensor:
        return self.block.mlp.norm(x)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        m = self.block.mlp
        return m.drop(m.fc2(m.drop(m.act(m.fc1(x)))))


_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _check_slices(x: torch.Tensor, image_size: int, num_slices: int) -> None:
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[-1] != image_size or x.shape[-2] != image_size:
        raise ValueError(f"expected (B*D, 3, {image_size}, {image_size}) slices for this encoder, got {tuple(x.shape)}")
    check_num_slices(x.shape[0], num_slices)


def _check_out_indices(out_indices: Sequence[int], count: int, what: str) -> tuple[int, ...]:
    if not out_indices or any(not 0 <= i < count for i in out_indices):
        raise ValueError(f"out_indices {list(out_indices)} must name {what} in 0..{count - 1}")
    return tuple(out_indices)


def _check_injections(
    injections: Sequence[torch.Tensor | None] | None,
    shapes: Sequence[tuple[int, int, int]],
    batch: int,
) -> list[torch.Tensor | None]:
    """One optional ``(N, h_k, w_k, C_k)`` grid per feature level (``shapes``: the ``(h_k, w_k, C_k)`` of level k)."""
    if injections is None:
        return [None] * len(shapes)
    if len(injections) != len(shapes):
        raise ValueError(
            f"got {len(injections)} injections for an encoder with {len(shapes)} feature levels (one per out_indices "
            "entry; None for a level without one)"
        )
    for k, (grid, shape) in enumerate(zip(injections, shapes, strict=True)):
        if grid is not None and tuple(grid.shape) != (batch, *shape):
            raise ValueError(
                f"injection {k} must be a channels-last grid {(batch, *shape)} (the shape of feature level {k}), "
                f"got {tuple(grid.shape)}"
            )
    return list(injections)


def _check_adapters(block_adapters: Sequence[BlockAdapters | None] | None, count: int) -> list[BlockAdapters | None]:
    if block_adapters is None:
        return [None] * count
    if len(block_adapters) != count:
        raise ValueError(f"got {len(block_adapters)} block adapters for an encoder of {count} blocks")
    return list(block_adapters)


class SamViTEncoder3D(nn.Module):
    """A SAM ViT image encoder over stacks of slices, returning multi-level features.

    Args:
        encoder: a finished ``segment_anything`` ``ImageEncoderViT`` (e.g. ``build_sam(...).image_encoder``).
        block_adapters: one :class:`BlockAdapters` (or None) per block; default none.
        slice_embedding: optional module adding a per-slice embedding to the tokens after the position
            embedding (:class:`masksam.adapters.SliceEmbedding`).
        out_indices: blocks whose outputs are returned besides the neck; default the last block of each
            quarter of the depth (SAM's four global-attention blocks for ViT-B/L/H).
        gradient_checkpointing: recompute block activations in the backward pass (saves memory in training).
        max_bias_elements: memory bound of the attention's additive-bias form.

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
        max_bias_elements: int = MAX_BIAS_ELEMENTS,
    ) -> None:
        super().__init__()
        depth = len(encoder.blocks)
        adapters = _check_adapters(block_adapters, depth)
        if out_indices is None:
            out_indices = [depth * (i + 1) // 4 - 1 for i in range(4)] if depth >= 4 else range(depth)
        self.out_indices = _check_out_indices(out_indices, depth, "blocks")
        self.patch_embed = encoder.patch_embed
        self.pos_embed = encoder.pos_embed
        self.blocks = nn.ModuleList(
            AdaptedViTBlock(b, a, max_bias_elements) for b, a in zip(encoder.blocks, adapters, strict=True)
        )
        self.neck = encoder.neck
        self.slice_embedding = slice_embedding
        self.gradient_checkpointing = gradient_checkpointing
        self.img_size = encoder.img_size
        patch = encoder.patch_embed.proj.kernel_size[0]
        width = encoder.patch_embed.proj.out_channels
        self.feature_channels = [width] * len(self.out_indices) + [encoder.neck[0].out_channels]
        self.feature_strides = [patch] * (len(self.out_indices) + 1)

    def forward(
        self, x: torch.Tensor, num_slices: int, injections: Sequence[torch.Tensor | None] | None = None
    ) -> list[torch.Tensor]:
        """Encode slices, optionally adding grids to the tokens before the feature blocks.

        Args:
            x: ``(B*D, 3, S, S)`` slices, the D slices of a stack consecutive.
            num_slices: D.
            injections: None, or one optional channels-last ``(B*D, S/16, S/16, C)`` grid per entry of
                ``out_indices``, added to the tokens just before block ``out_indices[k]`` runs.

        Returns:
            ``[block outputs (B*D, C, S/16, S/16)..., neck (B*D, 256, S/16, S/16)]``, channels-first.
        """
        _check_slices(x, self.img_size, num_slices)
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        if self.slice_embedding is not None:
            x = self.slice_embedding(x)
        grids = _check_injections(injections, [tuple(x.shape[1:])] * len(self.out_indices), x.shape[0])
        before = dict(zip(self.out_indices, grids, strict=True))
        feats: list[torch.Tensor] = []
        for i, blk in enumerate(self.blocks):
            if before.get(i) is not None:
                x = x + before[i]
            x = maybe_checkpoint(self.gradient_checkpointing, blk, x, num_slices)
            if i in self.out_indices:
                feats.append(x.permute(0, 3, 1, 2))
        feats.append(self.neck(x.permute(0, 3, 1, 2)))
        return feats


class TinyViTEncoder3D(nn.Module):
    """LiteMedSAM's TinyViT encoder over stacks of slices, with :class:`BlockAdapters` in its attention blocks.

    Stage 0 (MBConv at full resolution) runs as it is; each block of the three attention stages is an
    :class:`AdaptedTinyViTBlock`. TinyViT's batch norms whose parameters are frozen stay in eval mode when
    the encoder trains: their running statistics are pretrained weights, not to be re-estimated from
    training batches.

    Args:
        encoder: the image encoder of :func:`masksam.backbones.build_lite_medsam`.
        block_adapters: one :class:`BlockAdapters` (or None) per attention block, in order; default none.
        slice_embedding: optional per-slice embedding added to the stage-0 output tokens.
        out_indices: stages (0-3) whose outputs are returned besides the neck; default all four.
        gradient_checkpointing: recompute block activations in the backward pass.

    Attributes:
        feature_channels, feature_strides: channels and strides of the returned features, neck last.
    """

    def __init__(
        self,
        encoder: nn.Module,
        block_adapters: Sequence[BlockAdapters | None] | None = None,
        slice_embedding: nn.Module | None = None,
        out_indices: Sequence[int] | None = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        layers = list(encoder.layers)
        blocks = [blk for layer in layers[1:] for blk in layer.blocks]
        adapters = iter(_check_adapters(block_adapters, len(blocks)))
        self.patch_embed = encoder.patch_embed
        self.stem = layers[0]
        self.stages = nn.ModuleList(
            nn.ModuleList(AdaptedTinyViTBlock(blk, next(adapters)) for blk in layer.blocks) for layer in layers[1:]
        )
        self.downsamples = nn.ModuleList(layer.downsample or nn.Identity() for layer in layers[1:])
        self.neck = encoder.neck
        self.out_indices = _check_out_indices(range(len(layers)) if out_indices is None else out_indices, 4, "stages")
        self.slice_embedding = slice_embedding
        self.gradient_checkpointing = gradient_checkpointing
        self.img_size = encoder.img_size
        # Stage i ends at the resolution stage i + 1 starts at (the last one keeps its own).
        sides = [layer.input_resolution[0] for layer in layers[1:]] + [layers[-1].input_resolution[0]]
        self.sides = sides  # token-grid side after each stage
        widths = [layer.downsample.out_dim if layer.downsample is not None else layer.dim for layer in layers]
        self.feature_channels = [widths[i] for i in self.out_indices] + [encoder.neck[0].out_channels]
        self.feature_strides = [self.img_size // sides[i] for i in self.out_indices] + [self.img_size // sides[-1]]
        self.embed_dim = widths[0]

    def train(self, mode: bool = True) -> TinyViTEncoder3D:
        super().train(mode)
        for module in self.modules():
            if isinstance(module, _BATCH_NORMS) and not any(p.requires_grad for p in module.parameters()):
                module.eval()
        return self

    @staticmethod
    def _grid(tokens: torch.Tensor, side: int) -> torch.Tensor:
        return tokens.reshape(tokens.shape[0], side, -1, tokens.shape[-1])

    def _run_stage(self, x: torch.Tensor, blocks: nn.ModuleList, num_slices: int) -> torch.Tensor:
        for blk in blocks:
            x = maybe_checkpoint(self.gradient_checkpointing, blk, x, num_slices)
        return x

    def forward(
        self, x: torch.Tensor, num_slices: int, injections: Sequence[torch.Tensor | None] | None = None
    ) -> list[torch.Tensor]:
        """Encode slices, optionally adding grids to the outputs of the feature stages.

        Args:
            x: ``(B*D, 3, S, S)`` slices, the D slices of a stack consecutive.
            num_slices: D.
            injections: None, or one optional channels-last grid per entry of ``out_indices``, shaped as that
                level's feature ``(B*D, S/s_k, S/s_k, C_k)`` (``feature_strides``, ``feature_channels``), added to
                the output of stage ``out_indices[k]``: the returned feature and the next stage's input include it.

        Returns:
            ``[stage outputs (B*D, C_k, h_k, w_k)..., neck (B*D, 256, S/4, S/4)]``, channels-first.
        """
        _check_slices(x, self.img_size, num_slices)
        grid = self._grid(self.stem(self.patch_embed(x)), self.sides[0])  # stage 0 ends as (N, L, C) tokens
        if self.slice_embedding is not None:
            grid = self.slice_embedding(grid)
        levels = zip(self.out_indices, self.feature_channels[:-1], strict=True)
        shapes = [(self.sides[i], self.sides[i], c) for i, c in levels]
        after = dict(zip(self.out_indices, _check_injections(injections, shapes, x.shape[0]), strict=True))
        if after.get(0) is not None:
            grid = grid + after[0]
        stage_outputs = [grid]
        for i, (blocks, downsample) in enumerate(zip(self.stages, self.downsamples, strict=True), start=1):
            grid = self._run_stage(grid, blocks, num_slices)
            if not isinstance(downsample, nn.Identity):
                grid = self._grid(downsample(grid.permute(0, 3, 1, 2)), self.sides[i])
            if after.get(i) is not None:
                grid = grid + after[i]
            stage_outputs.append(grid)
        feats = [stage_outputs[i].permute(0, 3, 1, 2) for i in self.out_indices]
        return feats + [self.neck(stage_outputs[-1].permute(0, 3, 1, 2))]


def build_encoder3d(
    image_encoder: nn.Module,
    block_adapters: BlockAdapterFactory | None = None,
    slice_embedding: int | None = None,
    out_indices: Sequence[int] | None = None,
    gradient_checkpointing: bool = False,
) -> SamViTEncoder3D | TinyViTEncoder3D:
    """Wrap a built SAM-family image encoder as a slice-stack encoder with adapters in its blocks.

    Args:
        image_encoder: ``build_sam(name, ...).image_encoder`` for any backbone: a ``segment_anything``
            ``ImageEncoderViT`` (ViT-B/L/H, MedSAM, tiny) or LiteMedSAM's TinyViT.
        block_adapters: called once with the token widths of the transformer blocks, in order, to make their
            :class:`BlockAdapters` (the presets of :mod:`masksam.adapters.presets`); None: no adapters.
        slice_embedding: when given, the number of slices D of a learnable per-slice embedding
            (zero-initialised) added to the tokens before the first transformer block.
        out_indices: feature levels returned besides the neck: blocks of a ViT (default: the last of each
            quarter of the depth), stages of TinyViT (default: all four).
        gradient_checkpointing: recompute each block in the backward pass.

    Returns:
        a module mapping ``(B*D, 3, S, S)`` and ``num_slices`` to a list of channels-first features, neck
        last, with ``feature_channels`` and ``feature_strides``.
    """
    if isinstance(image_encoder, ImageEncoderViT):
        blocks = list(image_encoder.blocks)
        width = image_encoder.patch_embed.proj.out_channels
        family: Callable[..., SamViTEncoder3D | TinyViTEncoder3D] = SamViTEncoder3D
        dims = [width] * len(blocks)
    elif hasattr(image_encoder, "layers") and hasattr(image_encoder, "neck"):
        layers = list(image_encoder.layers)
        width = layers[0].downsample.out_dim
        family = TinyViTEncoder3D
        dims = [layer.dim for layer in layers[1:] for _ in layer.blocks]
    else:
        raise TypeError(f"expected a SAM ViT or LiteMedSAM TinyViT image encoder, got {type(image_encoder).__name__}")
    adapters = list(block_adapters(dims)) if block_adapters is not None else None
    embedding = SliceEmbedding(slice_embedding, width) if slice_embedding is not None else None
    return family(
        image_encoder,
        block_adapters=adapters,
        slice_embedding=embedding,
        out_indices=out_indices,
        gradient_checkpointing=gradient_checkpointing,
    )
