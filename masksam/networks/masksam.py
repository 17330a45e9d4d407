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
from segment_anything.modeling import MaskDecoder, PromptEncoder
from torch import nn

from masksam.adapters import (
    Adapter,
    SliceDenseEmbedding,
    format_parameter_counts,
    mark_trainable,
    masksam_block_adapters,
    masksam_decoder_adapters,
)
from masksam.backbones import build_encoder3d, build_sam
from masksam.backbones.checkpointing import maybe_checkpoint
from masksam.losses.box_ops import masks_to_boxes_normalized
from masksam.networks.mask_decoder import AdaptedTwoWayTransformer, hypernetwork_masks
from masksam.networks.prompt_generator import PromptGenerator3D
from masksam.networks.settings import RecordsBuildSettings, records_build_settings

__all__ = [
    "ClassHead",
    "MASKSAM_OUTPUT_KEYS",
    "MaskClassificationDecoder",
    "MaskHead3D",
    "MaskSAM",
    "Stem3D",
    "build_masksam",
]

logger = logging.getLogger(__name__)

#: Keys of the dict returned by :meth:`MaskSAM.forward` (per-slice tensors, ``N = B * D``, ``n = b * D + d``).
MASKSAM_OUTPUT_KEYS = ("pred_logits", "pred_masks", "aux_masks", "aux_boxes")


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


class ClassHead(nn.Module):
    """The learnable global classifier token and the linear classifier over K classes + no-object."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.token = nn.Parameter(torch.zeros(1, dim))
        nn.init.normal_(self.token, std=0.02)
        self.linear = nn.Linear(dim, num_classes + 1)


class MaskClassificationDecoder(nn.Module):
    """SAM's mask decoder with MaskSAM's 3D adapters and a classifier token.

    Tokens: ``[iou, mask tokens, sparse prompt tokens, classifier]`` where classifier = global token + the
    prompt generator's auxiliary token. The two-way transformer runs with the adapters of
    :func:`~masksam.adapters.masksam_decoder_adapters`; the mask is SAM's hypernetwork product of the
    first mask token (multimask off) and the class logits come from the classifier token.

    Args:
        mask_decoder: a finished ``segment_anything`` ``MaskDecoder`` (weights frozen by the caller); its
            transformer, output tokens, up-scaling and first hypernetwork MLP are used.
        num_classes: K, background included; the classifier has K + 1 outputs (last = no-object).
        num_slices: D.
        adapter_dim: hidden width of the adapters (research code: 64).
        depth_ratio: expansion of the slice MLPs.
        mlp_scale: weight of the adapter beside the token MLP.
        gradient_checkpointing: recompute each two-way layer and the heads in the backward pass.
    """

    def __init__(
        self,
        mask_decoder: MaskDecoder,
        num_classes: int,
        num_slices: int,
        adapter_dim: int = 64,
        depth_ratio: int = 4,
        mlp_scale: float = 0.5,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        dim = mask_decoder.transformer_dim
        layer_adapters, final_adapter = masksam_decoder_adapters(
            dim, adapter_dim, num_slices, len(mask_decoder.transformer.layers), depth_ratio, mlp_scale
        )
        self.transformer = AdaptedTwoWayTransformer(mask_decoder.transformer, layer_adapters, final_adapter)
        self.iou_token = mask_decoder.iou_token
        self.mask_tokens = mask_decoder.mask_tokens
        self.output_upscaling = mask_decoder.output_upscaling
        self.mask_hypernetwork = mask_decoder.output_hypernetworks_mlps[0]
        self.class_head = ClassHead(dim, num_classes)
        self.num_slices = num_slices
        self.gradient_checkpointing = gradient_checkpointing

    @property
    def gradient_checkpointing(self) -> bool:
        return self.transformer.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, enabled: bool) -> None:
        self.transformer.gradient_checkpointing = enabled

    def _heads(self, queries: torch.Tensor, keys: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        masks = hypernetwork_masks(self.output_upscaling, [self.mask_hypernetwork], queries[:, 1:2], keys, grid)
        return self.class_head.linear(queries[:, -1]), masks[:, 0]

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompts: torch.Tensor,
        aux_tokens: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode ``N = G*D`` problems (slice index innermost).

        Args:
            image_embeddings: ``(N, C, h, w)`` image embedding plus dense prompt of each problem.
            image_pe: ``(D, C, h, w)`` positional encoding of each slice position.
            sparse_prompts: ``(N, P, C)`` prompt tokens (two box corners).
            aux_tokens: ``(N, C)`` auxiliary classifier tokens.

        Returns:
            class logits ``(N, K+1)`` and mask logits ``(N, 4h, 4w)``.
        """
        n, _, h, w = image_embeddings.shape
        fixed = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0).expand(n, -1, -1)
        cls = (self.class_head.token + aux_tokens).unsqueeze(1)
        tokens = torch.cat([fixed, sparse_prompts, cls], dim=1)
        queries, keys = self.transformer(image_embeddings, image_pe, tokens, self.num_slices)
        return maybe_checkpoint(self.gradient_checkpointing, self._heads, queries, keys, (h, w))


class MaskHead3D(nn.Module):
    """MaskSAM's final 3D CNN: mask logits of all queries ``(B, Q, D, h, w)`` -> ``(B, Q, D, h*2^n, w*2^n)``.

    3x3x3 conv Q->hidden, ``num_up`` x [(1,2,2) transposed conv, instance norm, GELU], 3x3x3 conv hidden->Q.
    With ``gradient_checkpointing`` its activations are recomputed in the backward pass.
    """

    def __init__(self, num_queries: int, num_up: int, hidden: int = 64, gradient_checkpointing: bool = False) -> None:
        super().__init__()
        self.gradient_checkpointing = gradient_checkpointing
        if num_up < 0:
            raise ValueError(f"num_up must be >= 0, got {num_up}")
        layers: list[nn.Module] = [nn.Conv3d(num_queries, hidden, 3, padding=1)]
        for _ in range(num_up):
            layers += [
                nn.ConvTranspose3d(hidden, hidden, (1, 2, 2), stride=(1, 2, 2)),
                nn.InstanceNorm3d(hidden, affine=True),
                nn.GELU(),
            ]
        layers.append(nn.Conv3d(hidden, num_queries, 3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        """``(B, Q, D, h, w)`` -> ``(B, Q, D, h*2^n, w*2^n)``."""
        return maybe_checkpoint(self.gradient_checkpointing, self.layers, masks)


class MaskSAM(RecordsBuildSettings):
    """The MaskSAM network, assembled from finished parts (see :func:`build_masksam`).

    Args:
        stem: ``(B, C_in, H, W, D)`` -> ``(B, 3, H, W, D)``.
        encoder: a slice-stack encoder of :func:`masksam.backbones.build_encoder3d` (with adapters).
        prompt_generator: :class:`PromptGenerator3D` over the encoder's features.
        prompt_encoder: SAM's ``PromptEncoder`` (frozen), built for ``image_size``.
        slice_pe: per-slice dense positional encoding added to the prompt encoder's (``SliceDenseEmbedding``).
        decoder: :class:`MaskClassificationDecoder`.
        mask_head: :class:`MaskHead3D` bringing decoder masks to full resolution.
        num_slices: D, fixed by the slice-axis adapters; stored with the model.
        image_size: in-plane size S of the inputs.
        query_chunk_size: decode at most this many queries at a time (all ``B*Q*D`` problems at once when
            None). A memory bound: the decoder's image tokens take ``B * chunk * D * C * h * w`` elements
            per tensor and its up-scaled masks 8x that; the outputs do not depend on it.
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
        query_chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        if query_chunk_size is not None and query_chunk_size < 1:
            raise ValueError(f"query_chunk_size must be >= 1 or None, got {query_chunk_size}")
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
        self.query_chunk_size = query_chunk_size

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

    def _prompts(
        self, aux_masks: torch.Tensor, aux_boxes: torch.Tensor, grid: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM prompts of every ``(b, q, d)`` problem: boxes ``(B, Q, D, 4)`` in pixels and binary mask
        prompts ``(B, Q, D, 4h, 4w)``. The box is the mean of the learnt box and the tight box of the
        thresholded auxiliary mask (the learnt box alone where that mask is empty); both carry gradients
        to the generator through the learnt box."""
        s = aux_masks.shape[-1]
        with torch.no_grad():
            binary = aux_masks > 0
            tight = masks_to_boxes_normalized(binary.flatten(0, 2)).reshape(aux_boxes.shape)
            has_mask = binary.flatten(3).any(dim=3, keepdim=True)
            mask_prompt = F.interpolate(binary.flatten(0, 1).float(), size=(4 * grid[0], 4 * grid[1]), mode="nearest")
        boxes = torch.where(has_mask, 0.5 * (aux_boxes + tight), aux_boxes) * s
        return boxes, mask_prompt.reshape(*aux_masks.shape[:3], *mask_prompt.shape[-2:])

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
        boxes, mask_prompt = self._prompts(aux_masks, aux_boxes, (h, w))
        image_pe = self.prompt_encoder.get_dense_pe() + self.slice_pe.embedding  # (D, C, h, w)
        embedding = embedding.reshape(b, 1, d, c, h, w)
        step = self.query_chunk_size or q
        logits, masks = [], []
        for j in range(0, q, step):  # problems ordered (b, q, d): the D slices of a query consecutive
            chunk = slice(j, min(j + step, q))
            sparse, dense = self.prompt_encoder(
                points=None,
                boxes=boxes[:, chunk].reshape(-1, 4),
                masks=mask_prompt[:, chunk].reshape(-1, 1, *mask_prompt.shape[-2:]),
            )
            image = (embedding + dense.reshape(b, -1, d, c, h, w)).reshape(-1, c, h, w)
            chunk_logits, chunk_masks = self.decoder(
                image, image_pe, sparse, gen["aux_tokens"][:, chunk].reshape(-1, c)
            )
            logits.append(chunk_logits.reshape(b, -1, d, chunk_logits.shape[-1]))
            masks.append(chunk_masks.reshape(b, -1, d, *chunk_masks.shape[-2:]))
        masks = self.mask_head(torch.cat(masks, dim=1))  # (B, Q, D, S, S)

        def per_slice(t: torch.Tensor) -> torch.Tensor:  # (B, Q, D, ...) -> (B*D, Q, ...)
            return t.transpose(1, 2).reshape(b * d, q, *t.shape[3:])

        return {
            "pred_logits": per_slice(torch.cat(logits, dim=1)),
            "pred_masks": per_slice(masks),
            "aux_masks": per_slice(aux_masks),
            "aux_boxes": per_slice(aux_boxes),
        }


@records_build_settings("checkpoint", "gradient_checkpointing", "query_chunk_size", "compile")
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
    query_chunk_size: int | None = 4,
    compile: bool = False,
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
        encoder_adapter_dim: hidden width of the encoder's depth-conv adapters, at most the block width
            (research code: width/4, i.e. 320 for ViT-H; None selects that).
        decoder_adapter_dim: hidden width of the decoder adapters (research code: 64).
        generator_widths: prompt generator stage widths (default 192, 96, 96, 48, 48 for a stride-16 neck;
            research code 256, 128, 128, 64, 64).
        stem_channels: hidden channels of the 3D stem.
        mask_head_channels: hidden channels of the final 3D CNN (research code: 64).
        gradient_checkpointing: recompute activations in the backward pass (training memory): each encoder
            block, prompt-generator stage and decoder layer, and the final 3D CNN.
        query_chunk_size: decode at most this many queries at a time (None: all; see :class:`MaskSAM`). The
            default, 4, keeps a ViT-B 512x512x9 patch's decoder tensors near 40 MB (its up-scaled masks near
            80 MB) instead of 226 MB (450 MB) with all 24 queries.
        compile: compile the network's forward with ``torch.compile`` (in place: parameter names and
            state dicts stay those of the plain network), with the 3D CNNs' weights channels-last; the
            first call of each input shape compiles.

    Returns:
        the network, with its build settings recorded (all arguments except the run-time switches
        ``checkpoint``, ``gradient_checkpointing``, ``query_chunk_size`` and ``compile``; see
        :mod:`masksam.networks.settings`).
    """
    if num_slices < 1 or num_queries < 1:
        raise ValueError(f"num_slices and num_queries must be >= 1, got {num_slices} and {num_queries}")
    sam = build_sam(backbone, image_size=image_size, checkpoint=checkpoint)
    encoder = build_encoder3d(
        sam.image_encoder, masksam_block_adapters(hidden_dim=encoder_adapter_dim), slice_embedding=num_slices
    )
    token_dim = sam.mask_decoder.transformer_dim
    model = MaskSAM(
        stem=Stem3D(in_channels, stem_channels),
        encoder=encoder,
        prompt_generator=PromptGenerator3D(
            encoder.feature_channels, encoder.feature_strides, num_queries, token_dim=token_dim, widths=generator_widths
        ),
        prompt_encoder=sam.prompt_encoder,
        slice_pe=SliceDenseEmbedding(num_slices, token_dim, sam.prompt_encoder.image_embedding_size),
        decoder=MaskClassificationDecoder(sam.mask_decoder, num_classes, num_slices, adapter_dim=decoder_adapter_dim),
        mask_head=MaskHead3D(
            num_queries, num_up=int(math.log2(encoder.feature_strides[-1] // 4)), hidden=mask_head_channels
        ),
        num_slices=num_slices,
        image_size=image_size,
        query_chunk_size=query_chunk_size,
    )
    model.set_gradient_checkpointing(gradient_checkpointing)
    model.mark_trainable()
    logger.debug("%s", format_parameter_counts(model, f"MaskSAM[{backbone}]"))
    if compile:
        # Inductor writes the norms and activations itself, layout-agnostic, while oneDNN's and cuDNN's 3D
        # convolutions run faster on channels-last tensors (docs/performance.md, "Policy").
        for part in (model.prompt_generator, model.mask_head):
            part.to(memory_format=torch.channels_last_3d)
        model.compile()
    return model
