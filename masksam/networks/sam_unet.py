# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""SAM-UNet (Yang et al., 2024): a convolutional branch beside SAM's frozen image encoder, multi-scale fusion.

A torchvision ResNet (34 or 50; :mod:`masksam.networks.conv_branch`) reads the same SAM-normalised slice as SAM's
frozen image encoder; a :class:`Reshaper` brings each of its four stages to the token grid of one feature level of
the encoder, where the shared encoder adds it (``injections`` of :func:`masksam.backbones.build_encoder3d`: before SAM's
global-attention blocks for a ViT, at the stage outputs of LiteMedSAM's TinyViT). Bridges up-sample the first
three levels and the neck to SAM's mask resolution (4x the image embedding) and sum them: the multi-scale
feature. SAM's two-way transformer decodes one new output token with the sparse prompts; SAM's up-scaling of
the image tokens, refined by two 3x3 convolutions, is added to the multi-scale feature and dotted with the
token's hypernetwork output: one mask per prompt.

Differences from the research code (Hhankyangg/sam-unet): the last 1x1 convolution of each reshaper starts at
zero (the research code Kaiming-initialises it), so an untrained branch injects nothing and the frozen
encoder's features are exactly SAM's at the start of training; volumes are decoded slice by slice with the
prompt contract of :mod:`masksam.networks.med_sa` (boxes as corner labels 2 and 3, slices without a prompt
are background); any SAM-family backbone, including LiteMedSAM's TinyViT.

Trainable (as in the research code): everything but SAM's image encoder (ViT or TinyViT, neck included): the
ResNet, the reshapers, the bridges, SAM's two-way transformer and up-scaling, the output token, the refinement
and the hypernetwork MLP, and (``train_prompt_encoder``, default True as in the research code) SAM's prompt
encoder. Loss of the paper's recipe: focal (alpha 0.25, gamma 2) + 20 x Dice on the mask logits, i.e.
``monai.losses.DiceFocalLoss(sigmoid=True, gamma=2.0, alpha=0.25, lambda_focal=1.0, lambda_dice=20.0)``.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder, PromptEncoder
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.mask_decoder import MLP
from torch import nn

from masksam.adapters import format_parameter_counts, mark_trainable
from masksam.backbones import build_encoder3d, build_sam
from masksam.networks.conv_branch import CNN_BRANCHES, Reshaper, ResNetBranch, fusion_bridge, log2_ratio
from masksam.networks.mask_decoder import AdaptedTwoWayTransformer, hypernetwork_masks
from masksam.networks.med_sa import NO_PROMPT_LOGIT, PromptedSliceNetwork, prompted_slice_inputs
from masksam.networks.settings import records_build_settings

__all__ = ["FUSED_FOLD", "SamUNet", "SamUNetDecoder", "build_sam_unet"]

logger = logging.getLogger(__name__)

#: Side ratio of the multi-scale feature to the image embedding (SAM's two x2 up-scalings); ``encode`` folds the
#: feature into the embedding's grid with ``pixel_unshuffle`` by this factor.
FUSED_FOLD = 4


class SamUNetDecoder(nn.Module):
    """SAM's two-way transformer with a single new output token; its mask is the token's hypernetwork output
    dotted with SAM's up-scaled image tokens, refined (3x3 conv, LayerNorm2d, GELU, 3x3 conv) and added to the
    multi-scale feature.

    Args:
        mask_decoder: a finished ``segment_anything`` ``MaskDecoder``: its transformer and up-scaling are used (and
            trained); its IoU/mask tokens, hypernetworks and IoU head are not.
        gradient_checkpointing: recompute each two-way layer in the backward pass.
    """

    def __init__(self, mask_decoder: MaskDecoder, gradient_checkpointing: bool = False) -> None:
        super().__init__()
        dim = mask_decoder.transformer_dim
        self.transformer = AdaptedTwoWayTransformer(
            mask_decoder.transformer, gradient_checkpointing=gradient_checkpointing
        )
        self.output_upscaling = mask_decoder.output_upscaling
        width = [m for m in self.output_upscaling if isinstance(m, nn.ConvTranspose2d)][-1].out_channels
        self.output_token = nn.Embedding(1, dim)
        self.hypernetwork = MLP(dim, dim, width, 3)
        self.refine = nn.Sequential(
            nn.Conv2d(width, 2 * width, kernel_size=3, padding=1),
            LayerNorm2d(2 * width),
            nn.GELU(),
            nn.Conv2d(2 * width, width, kernel_size=3, padding=1),
        )
        self.fused_channels = width

    def forward(
        self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor, fused: torch.Tensor
    ) -> torch.Tensor:
        """Decode ``N`` problems.

        Args:
            image_embeddings: ``(N, C, h, w)`` with the dense prompt added.
            image_pe: ``(1, C, h, w)`` SAM's dense positional encoding.
            sparse: ``(N, P, C)`` sparse prompt tokens.
            fused: ``(N, C', 4h, 4w)`` multi-scale feature (``C' = fused_channels``).

        Returns:
            ``(N, 1, 4h, 4w)`` mask logits.
        """
        n, _, h, w = image_embeddings.shape
        tokens = torch.cat([self.output_token.weight.expand(n, -1, -1), sparse.to(image_embeddings.dtype)], dim=1)
        queries, keys = self.transformer(image_embeddings, image_pe, tokens)

        def upscaled(x: torch.Tensor) -> torch.Tensor:
            return self.refine(self.output_upscaling(x)) + fused

        return hypernetwork_masks(upscaled, [self.hypernetwork], queries[:, :1], keys, (h, w))


class SamUNet(PromptedSliceNetwork):
    """The SAM-UNet network, assembled from finished parts (see :func:`build_sam_unet`); 2D: slices are independent.

    Args:
        encoder: a slice-stack encoder of :func:`masksam.backbones.build_encoder3d` (no adapters) with four feature
            levels.
        cnn: :class:`ResNetBranch`.
        reshapers: four :class:`Reshaper`, stage k of the CNN to the grid of feature level k.
        bridges: :func:`fusion_bridge` of feature levels 0..2, then of the neck, each to ``(C', 4h, 4w)``.
        prompt_encoder: SAM's ``PromptEncoder``.
        decoder: :class:`SamUNetDecoder`.
        pixel_mean, pixel_std, in_channels, num_slices, image_size: see
            :class:`~masksam.networks.med_sa.PromptedSliceNetwork` (``num_slices`` may be 1).
    """

    method_name = "SAM-UNet"

    def __init__(
        self,
        encoder: nn.Module,
        cnn: ResNetBranch,
        reshapers: nn.ModuleList,
        bridges: nn.ModuleList,
        prompt_encoder: PromptEncoder,
        decoder: SamUNetDecoder,
        pixel_mean: torch.Tensor,
        pixel_std: torch.Tensor,
        in_channels: int,
        num_slices: int,
        image_size: int,
    ) -> None:
        super().__init__(pixel_mean, pixel_std, in_channels, num_slices, image_size)
        levels = len(encoder.out_indices)
        if len(reshapers) != levels or len(cnn.channels) != levels or len(bridges) != levels:
            raise ValueError(
                f"SAM-UNet pairs the CNN's {len(cnn.channels)} stages, {len(reshapers)} reshapers and {len(bridges)} "
                f"bridges with the encoder's {levels} feature levels: all must be equal"
            )
        self.encoder = encoder
        self.cnn = cnn
        self.reshapers = reshapers
        self.bridges = bridges
        self.prompt_encoder = prompt_encoder
        self.decoder = decoder
        self.embedding_channels = encoder.feature_channels[-1]
        self.train_prompt_encoder = True

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Switch activation checkpointing of the encoder blocks and the decoder layers."""
        self.encoder.gradient_checkpointing = enabled
        self.decoder.transformer.gradient_checkpointing = enabled

    def mark_trainable(self, train_prompt_encoder: bool = True) -> tuple[int, int]:
        """Train everything but SAM's image encoder (the prompt encoder when ``train_prompt_encoder``); returns
        ``(total, trainable)`` counts."""
        self.train_prompt_encoder = train_prompt_encoder
        modules = [self.cnn, self.reshapers, self.bridges, self.decoder]
        return mark_trainable(self, types=(), modules=modules + ([self.prompt_encoder] if train_prompt_encoder else []))

    def injections(self, slices: torch.Tensor) -> list[torch.Tensor]:
        """The CNN branch on SAM-normalised ``slices (N, 3, S, S)``: one channels-last grid per feature level."""
        return [r(f).permute(0, 2, 3, 1) for r, f in zip(self.reshapers, self.cnn(slices), strict=True)]

    def fuse(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Encoder features (levels, then the neck) -> the multi-scale feature ``(N, C', 4h, 4w)``."""
        return sum(bridge(f) for bridge, f in zip(self.bridges, [*features[:-2], features[-1]], strict=True))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Encode stacks: what :meth:`decode` needs, per slice, in one tensor.

        Args:
            x: ``(B, C_in, S, S, D)`` intensities in [0, 1].

        Returns:
            ``(B*D, C + 16 C', h, w)`` (slice ``n = b*D + d``): SAM's image embedding ``(C, h, w)``, then the
            multi-scale feature ``(C', 4h, 4w)`` folded into the same grid by ``pixel_unshuffle(4)``.
        """
        slices = self.sam_slices(x)
        features = self.encoder(slices, x.shape[-1], self.injections(slices))
        fused = self.fuse(features)
        return torch.cat([features[-1], F.pixel_unshuffle(fused, FUSED_FOLD)], dim=1)

    def decode(
        self,
        embeddings: torch.Tensor,
        coords: torch.Tensor,
        labels: torch.Tensor,
        mask_inputs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Decode each slice with its prompts; slices without any prompt are not decoded.

        Args:
            embeddings: ``(N, C + 16 C', h, w)`` from :meth:`encode`.
            coords: ``(N, P, 2)`` ``(i, j)`` voxel coordinates on the ``(S, S)`` slices.
            labels: ``(N, P)`` prompt labels (:mod:`masksam.networks.med_sa`: 2 / 3 box corners, 1 / 0 clicks,
                -1 padding).
            mask_inputs: optional ``(N, 1, 4h, 4w)`` previous mask logits (SAM's dense prompt).

        Returns:
            ``(N, 1, 4h, 4w)`` mask logits; :data:`NO_PROMPT_LOGIT` on slices without a prompt.
        """
        n, channels, h, w = embeddings.shape
        c = self.embedding_channels
        if channels != c + FUSED_FOLD**2 * self.decoder.fused_channels:
            raise ValueError(
                f"SAM-UNet decodes the output of its encode(): (N, {c + FUSED_FOLD**2 * self.decoder.fused_channels}, "
                f"h, w), got {tuple(embeddings.shape)}"
            )
        out = embeddings.new_full((n, 1, 4 * h, 4 * w), NO_PROMPT_LOGIT)
        inputs = prompted_slice_inputs(self.prompt_encoder, embeddings[:, :c], coords, labels, mask_inputs)
        if inputs is None:
            return out
        idx, image, sparse, _ = inputs
        fused = F.pixel_shuffle(embeddings[idx, c:], FUSED_FOLD)
        logits = self.decoder(image, self.prompt_encoder.get_dense_pe().to(image.dtype), sparse, fused)
        return out.index_copy(0, idx, logits.to(out.dtype))


@records_build_settings("checkpoint", "cnn_checkpoint", "gradient_checkpointing", "compile")
def build_sam_unet(
    backbone: str = "vit_b",
    checkpoint: str | os.PathLike[str] | None = None,
    image_size: int = 256,
    in_channels: int = 1,
    num_slices: int = 1,
    cnn: str = "resnet34",
    cnn_checkpoint: str | os.PathLike[str] | None = None,
    train_prompt_encoder: bool = True,
    gradient_checkpointing: bool = False,
    compile: bool = False,
) -> SamUNet:
    """Build SAM-UNet on a SAM-family backbone and mark what trains.

    Args:
        backbone: ``vit_b``, ``vit_l``, ``vit_h``, ``medsam``, ``lite_medsam`` or ``tiny``; its encoder's four
            feature levels take the CNN's stages (ViT: the global-attention blocks; TinyViT: its stages).
        checkpoint: official-format SAM/MedSAM/LiteMedSAM weights (a path; nothing is downloaded).
        image_size: in-plane size S, a multiple of 32 (the ResNet's stride; of 64 for ``lite_medsam``; paper: 256).
        in_channels: input channels (averaged into SAM's grey image).
        num_slices: D, slices per input stack; slices are independent (2D), so any value works the same way.
        cnn: ``resnet34`` or ``resnet50``.
        cnn_checkpoint: torchvision-format weights of that ResNet (a path, e.g. ImageNet weights; nothing is
            downloaded); None: random initialisation.
        train_prompt_encoder: also train SAM's prompt encoder (the research code does).
        gradient_checkpointing: recompute encoder blocks and decoder layers in the backward pass.
        compile: compile the forward with ``torch.compile`` in place.

    Returns:
        the network, with its build settings recorded (all arguments except ``checkpoint``, ``cnn_checkpoint``,
        ``gradient_checkpointing`` and ``compile``; see :mod:`masksam.networks.settings`).
    """
    if cnn not in CNN_BRANCHES:
        raise ValueError(f"unknown cnn {cnn!r}; expected one of {sorted(CNN_BRANCHES)}")
    if image_size <= 0 or image_size % 32:
        raise ValueError(
            f"SAM-UNet's image_size must be a positive multiple of 32 (the ResNet's stride), got {image_size}"
        )
    sam = build_sam(backbone, image_size=image_size, checkpoint=checkpoint)
    encoder = build_encoder3d(sam.image_encoder)
    branch = ResNetBranch(cnn)
    if cnn_checkpoint is not None:
        branch.load_torchvision_weights(cnn_checkpoint)
    levels = len(encoder.out_indices)
    if levels != len(branch.channels):
        raise ValueError(f"backbone {backbone!r} has {levels} feature levels; SAM-UNet injects {len(branch.channels)}")
    strides, channels = encoder.feature_strides, encoder.feature_channels
    reshapers = nn.ModuleList(
        Reshaper(branch.channels[k], branch.strides[k], channels[k], strides[k]) for k in range(levels)
    )
    decoder = SamUNetDecoder(sam.mask_decoder)
    dim, width = sam.mask_decoder.transformer_dim, decoder.fused_channels
    target = strides[-1] // FUSED_FOLD  # stride of SAM's up-scaled image tokens
    bridges = nn.ModuleList(
        fusion_bridge(channels[k], dim, width, log2_ratio(strides[k], target, f"bridge {k}")) for k in range(levels - 1)
    )
    bridges.append(fusion_bridge(channels[-1], dim // 4, width, log2_ratio(strides[-1], target, "neck bridge")))
    model = SamUNet(
        encoder=encoder,
        cnn=branch,
        reshapers=reshapers,
        bridges=bridges,
        prompt_encoder=sam.prompt_encoder,
        decoder=decoder,
        pixel_mean=sam.pixel_mean,
        pixel_std=sam.pixel_std,
        in_channels=in_channels,
        num_slices=num_slices,
        image_size=image_size,
    )
    model.set_gradient_checkpointing(gradient_checkpointing)
    model.mark_trainable(train_prompt_encoder)
    logger.debug("%s", format_parameter_counts(model, f"SAM-UNet[{backbone}, {cnn}]"))
    if compile:
        model.compile()
    return model
