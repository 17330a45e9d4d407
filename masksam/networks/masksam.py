# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""MaskSAM: prompt-free SAM for volumes by mask classification (Xie et al., arXiv 2403.14103 / ICCV 2025).

A learned 3D stem makes a 3-channel volume; the frozen SAM image encoder with 3D adapters encodes each
slice of a stack of D slices; a 3D prompt generator emits, per slice and query, an auxiliary mask, box
and classifier token; SAM's frozen prompt encoder turns each mask + box into prompts for SAM's frozen
two-way decoder (with 3D adapters), whose classifier token is classified into K classes + no-object and
whose mask is refined to full resolution by a 3D CNN.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from segment_anything.modeling import PromptEncoder
from torch import nn

from masksam.adapters import (
    Adapter,
    DepthConvAdapter3D,
    SliceDenseEmbedding,
    SliceEmbedding,
    format_parameter_counts,
    mark_trainable,
    masksam_block_adapters,
)
from masksam.backbones import SamViTEncoder3D, TinyViTEncoder3D, build_sam, global_attn_indexes
from masksam.backbones.checkpointing import TEMPORARY_ELEMENTS
from masksam.losses.box_ops import masks_to_boxes_normalized
from masksam.networks.mask_decoder import MaskClassificationDecoder, MaskHead3D
from masksam.networks.prompt_generator import PromptGenerator3D

__all__ = ["MaskSAM", "Stem3D", "build_masksam", "MASKSAM_OUTPUT_KEYS"]

logger = logging.getLogger(__name__)

#: Keys of the dict returned by :meth:`MaskSAM.forward` (per-slice tensors, ``N = B * D``, ``n = b * D + d``).
MASKSAM_OUTPUT_KEYS = ("pred_logits", "pred_masks", "aux_masks", "aux_boxes")

#: Default of :attr:`MaskSAM.decode_chunk_elements`: 16 MiB of float32 image tokens per decoder chunk
#: (one query of a 9x512x512 patch).
DECODE_CHUNK_ELEMENTS = TEMPORARY_ELEMENTS


class Stem3D(nn.Module):
    """Learned 3D stem: ``(B, C_in, H, W, D)`` -> ``(B, 3, H, W, D)`` "RGB" volume for SAM's encoder.

    A 3x3x3 conv block (instance norm, LeakyReLU) to ``hidden`` channels and a 3x3x3 conv to 3 channels,
    added to the channel mean of the input repeated three times. The last conv starts at zero, so at
    initialisation the pretrained encoder sees the (normalised) grey image itself rather than the output
    of random filters; the research code's stem (two conv blocks, no skip) starts from noise.
    """

    def __init__(self, in_channels: int, hidden: int = 8, out_channels: int = 3) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        act = ("leakyrelu", {"negative_slope": 0.01, "inplace": True})
        self.block = Convolution(3, in_channels, hidden, kernel_size=3, norm="instance", act=act)
        self.out = nn.Conv3d(hidden, out_channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grey = x.mean(dim=1, keepdim=True).expand(-1, self.out_channels, *x.shape[2:])
        return grey + self.out(self.block(x))


class MaskSAM(nn.Module):
    """The MaskSAM network, assembled from finished parts (see :func:`build_masksam`).

    Args:
        stem: ``(B, C_in, H, W, D)`` -> ``(B, 3, H, W, D)``.
        encoder: a :class:`SamViTEncoder3D` or :class:`TinyViTEncoder3D` (with adapters).
        prompt_generator: :class:`PromptGenerator3D` over the encoder's features.
        prompt_encoder: SAM's ``PromptEncoder`` (frozen), built for ``image_size``.
        slice_pe: per-slice dense positional encoding added to the prompt encoder's (``SliceDenseEmbedding``).
        decoder: :class:`MaskClassificationDecoder`.
        mask_head: :class:`MaskHead3D` bringing decoder masks to full resolution.
        num_slices: D, fixed by the slice-axis adapters; stored with the model.
        image_size: in-plane size S of the inputs.
        decode_chunk_elements: without autograd, the prompt encoder and decoder run on chunks of queries
            whose image tokens have at most this many elements (at least one query); None decodes all
            ``B*Q*D`` problems at once (see :meth:`_decode_chunks`). The outputs do not depend on it.
    """

    def __init__(
        self,
        stem: nn.Module,
        encoder: nn.Module,
        prompt_generator: PromptGenerator3D,
        prompt_encoder: PromptEncoder,
        slice_pe: SliceDenseEmbedding,
        decoder: MaskClassificationDecoder,
        mask_head: MaskHead3D,
        num_slices: int,
        image_size: int,
        decode_chunk_elements: int | None = DECODE_CHUNK_ELEMENTS,
    ) -> None:
        super().__init__()
        self.stem = stem
        self.encoder = encoder
        self.prompt_generator = prompt_generator
        self.prompt_encoder = prompt_encoder
        self.slice_pe = slice_pe
        self.decoder = decoder
        self.mask_head = mask_head
        self.num_slices = num_slices
        self.image_size = image_size
        self.num_queries = prompt_generator.num_queries
        self.num_classes = decoder.class_head.linear.out_features - 1
        self.decode_chunk_elements = decode_chunk_elements

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Switch activation checkpointing of the encoder blocks, generator stages, decoder layers and 3D head."""
        for module in (self.encoder, self.prompt_generator, self.decoder, self.mask_head):
            module.gradient_checkpointing = enabled

    def trainable_modules(self) -> list[nn.Module]:
        """Modules that train entirely (besides every :class:`Adapter`): the new CNNs and heads."""
        return [self.stem, self.prompt_generator, self.decoder.class_head, self.mask_head]

    def mark_trainable(self) -> tuple[int, int]:
        """Freeze SAM, train adapters and new parts; returns ``(total, trainable)`` parameter counts."""
        return mark_trainable(self, types=(Adapter,), modules=self.trainable_modules())

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 5:
            raise ValueError(f"MaskSAM expects (B, C, H, W, D) volumes, got shape {tuple(x.shape)}")
        _, _, h, w, d = x.shape
        if d != self.num_slices or h != self.image_size or w != self.image_size:
            raise ValueError(
                f"MaskSAM was built for patches of {self.image_size}x{self.image_size}x{self.num_slices} "
                f"(H x W x slices), got {h}x{w}x{d}; use a sliding-window inferer with this roi_size"
            )

    def _decode_chunks(self, b: int, q: int, per_query: int) -> list[tuple[slice, slice]]:
        """``(batch, query)`` ranges decoded together: all at once under autograd, else chunks of queries.

        Without autograd nothing is kept between chunks, so the decoder's temporaries (each ``per_query``
        elements per query) stay under :attr:`decode_chunk_elements`; on CPU, tensors that small are
        reused by the allocator instead of being mapped (and zero-filled by the kernel) afresh.
        """
        limit = self.decode_chunk_elements
        if torch.is_grad_enabled() or limit is None or b * q * per_query <= limit:
            return [(slice(0, b), slice(0, q))]
        step = max(1, limit // per_query)
        return [(slice(i, i + 1), slice(j, min(j + step, q))) for i in range(b) for j in range(0, q, step)]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Segment ``B`` patches.

        Args:
            x: ``(B, C_in, S, S, D)`` with D = ``num_slices`` (MONAI layout, slices last).

        Returns:
            dict with per-slice tensors (``N = B * D``, slice ``n = b * D + d``):
            ``pred_logits (N, Q, K+1)``; ``pred_masks (N, Q, S, S)`` logits; ``aux_masks (N, Q, S, S)`` logits
            of the prompt generator; ``aux_boxes (N, Q, 4)`` its normalised ``(x1, y1, x2, y2)`` boxes.
        """
        self._check_input(x)
        b, _, s, _, d = x.shape
        q = self.num_queries
        rgb = self.stem(x).permute(0, 4, 1, 2, 3).reshape(b * d, 3, s, s)
        feats = self.encoder(rgb, d)
        gen = self.prompt_generator(feats, d)
        aux_masks, aux_boxes = gen["aux_masks"], gen["aux_boxes"]  # (B, Q, D, S, S), (B, Q, D, 4)

        embedding = feats[-1]  # (B*D, C, h, w)
        c, h, w = embedding.shape[1:]
        with torch.no_grad():
            binary = (aux_masks > 0).flatten(0, 2)  # (B*Q*D, S, S), problems ordered (b, q, d)
            tight = masks_to_boxes_normalized(binary)
            has_mask = binary.flatten(1).any(dim=1, keepdim=True)
            mask_prompt = F.interpolate(binary[:, None].float(), size=(4 * h, 4 * w), mode="nearest")
        learned = aux_boxes.reshape(-1, 4)
        boxes = torch.where(has_mask, 0.5 * (learned + tight), learned) * s
        image_pe = self.prompt_encoder.get_dense_pe() + self.slice_pe.embedding  # (D, C, h, w)
        problem = (b, q, d)
        boxes, mask_prompt = boxes.reshape(*problem, 4), mask_prompt.reshape(*problem, 4 * h, 4 * w)
        tokens, embedding = gen["aux_tokens"].reshape(*problem, c), embedding.reshape(b, 1, d, c, h, w)
        logits, masks = [], []
        for bs, qs in self._decode_chunks(b, q, d * c * h * w):
            sparse, dense = self.prompt_encoder(
                points=None, boxes=boxes[bs, qs].reshape(-1, 4), masks=mask_prompt[bs, qs].reshape(-1, 1, 4 * h, 4 * w)
            )
            image = embedding[bs] + dense.reshape(bs.stop - bs.start, qs.stop - qs.start, d, c, h, w)
            chunk = self.decoder(image.reshape(-1, c, h, w), image_pe, sparse, tokens[bs, qs].reshape(-1, c))
            logits.append(chunk[0])
            masks.append(chunk[1])
        logits, masks = torch.cat(logits), torch.cat(masks)
        masks = self.mask_head(masks.reshape(b, q, d, 4 * h, 4 * w))  # (B, Q, D, S, S)

        def per_slice(t: torch.Tensor) -> torch.Tensor:  # (B, Q, D, ...) -> (B*D, Q, ...)
            return t.transpose(1, 2).reshape(b * d, q, *t.shape[3:])

        return {
            "pred_logits": per_slice(logits.reshape(b, q, d, -1)),
            "pred_masks": per_slice(masks),
            "aux_masks": per_slice(aux_masks),
            "aux_boxes": per_slice(aux_boxes),
        }


def build_masksam(
    backbone: str = "vit_b",
    checkpoint: str | os.PathLike[str] | None = None,
    image_size: int = 512,
    in_channels: int = 1,
    num_classes: int = 16,
    num_queries: int = 24,
    num_slices: int = 9,
    encoder_adapter_dim: int | None = 32,
    decoder_adapter_dim: int = 32,
    generator_widths: Sequence[int] | None = None,
    stem_channels: int = 8,
    mask_head_channels: int = 32,
    gradient_checkpointing: bool = False,
    decode_chunk_elements: int | None = DECODE_CHUNK_ELEMENTS,
) -> MaskSAM:
    """Build MaskSAM on a SAM-family backbone and mark what trains.

    Args:
        backbone: ``vit_b``, ``vit_l``, ``vit_h``, ``medsam``, ``lite_medsam`` or ``tiny``.
        checkpoint: official-format SAM/MedSAM/LiteMedSAM weights (a path; nothing is downloaded).
        image_size: in-plane patch size S (multiple of 16; of 64 for ``lite_medsam``).
        in_channels: input channels (modalities).
        num_classes: K, background included.
        num_queries: Q.
        num_slices: D, slices per patch (stored with the model: training and inference must agree).
        encoder_adapter_dim: hidden width of the encoder's depth-conv adapters (research code: embed_dim/4,
            i.e. 320 for ViT-H; None selects that).
        decoder_adapter_dim: hidden width of the decoder adapters (research code: 64).
        generator_widths: prompt generator stage widths (default 192, 96, 96, 48, 48 for a stride-16 neck;
            research code 256, 128, 128, 64, 64).
        stem_channels: hidden channels of the 3D stem.
        mask_head_channels: hidden channels of the final 3D CNN (research code: 64).
        gradient_checkpointing: recompute activations in the backward pass (training memory): each encoder
            block, prompt-generator stage and decoder layer, and the final 3D CNN.
        decode_chunk_elements: without autograd, decode chunks of queries whose image tokens have at most
            this many elements (None: all problems at once; see :class:`MaskSAM`).
    """
    if num_slices < 1 or num_queries < 1:
        raise ValueError(f"num_slices and num_queries must be >= 1, got {num_slices} and {num_queries}")
    sam = build_sam(backbone, image_size=image_size, checkpoint=checkpoint)
    if backbone == "lite_medsam":
        stage_adapters = []
        for layer in list(sam.image_encoder.layers)[1:]:
            hidden = min(encoder_adapter_dim or layer.dim // 4, layer.dim)
            stage_adapters.append([DepthConvAdapter3D(layer.dim, hidden) for _ in layer.blocks])
        encoder: nn.Module = TinyViTEncoder3D(
            sam.image_encoder,
            stage_adapters=stage_adapters,
            slice_embedding=SliceEmbedding(num_slices, 128),
        )
    else:
        enc = sam.image_encoder
        dim, depth = enc.patch_embed.proj.out_channels, len(enc.blocks)
        # The generator fuses 4 encoder levels: the global-attention blocks (4 in ViT-B/L/H), else the last 4.
        out_indices = global_attn_indexes(enc)
        if len(out_indices) < 4:
            out_indices = tuple(range(depth))[-4:]
        encoder = SamViTEncoder3D(
            enc,
            block_adapters=masksam_block_adapters(dim, depth, hidden_dim=encoder_adapter_dim),
            slice_embedding=SliceEmbedding(num_slices, dim),
            out_indices=out_indices,
        )
    token_dim = sam.mask_decoder.transformer_dim
    generator = PromptGenerator3D(
        encoder.feature_channels,
        encoder.feature_strides,
        num_queries,
        token_dim=token_dim,
        widths=generator_widths,
    )
    grid = sam.prompt_encoder.image_embedding_size
    neck_stride = encoder.feature_strides[-1]
    model = MaskSAM(
        stem=Stem3D(in_channels, stem_channels),
        encoder=encoder,
        prompt_generator=generator,
        prompt_encoder=sam.prompt_encoder,
        slice_pe=SliceDenseEmbedding(num_slices, token_dim, grid),
        decoder=MaskClassificationDecoder(
            sam.mask_decoder,
            num_classes,
            num_slices,
            adapter_dim=decoder_adapter_dim,
        ),
        mask_head=MaskHead3D(
            num_queries,
            num_up=int(math.log2(neck_stride // 4)),
            hidden=mask_head_channels,
        ),
        num_slices=num_slices,
        image_size=image_size,
        decode_chunk_elements=decode_chunk_elements,
    )
    model.set_gradient_checkpointing(gradient_checkpointing)
    model.mark_trainable()
    logger.debug("%s", format_parameter_counts(model, f"MaskSAM[{backbone}]"))
    return model
