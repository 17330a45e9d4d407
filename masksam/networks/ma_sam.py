# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""MA-SAM: prompt-free SAM for volumes with FacT updates and 3D adapters (Chen et al., MedIA 2024).

A stack of T consecutive slices is folded into the batch of SAM's frozen image encoder, whose blocks carry
FacT-TT updates of q and v (factors shared across blocks) and two 3D adapters (before attention and
before the MLP) that convolve across the slices on the full token grid. SAM's mask decoder is fine-tuned
without prompts (the no-mask embedding as dense prompt) with one mask token per class, all of them
output, and progressive up-sampling to the input resolution: a semantic network mapping
``(B, C_in, S, S, T)`` to ``(B, K, S, S, T)`` logits.
"""

from __future__ import annotations

import logging
import math
import os

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.mask_decoder import MLP
from torch import nn

from masksam.adapters import Adapter, format_parameter_counts, ma_sam_block_adapters, mark_trainable
from masksam.backbones import build_encoder3d, build_sam
from masksam.backbones.checkpointing import maybe_checkpoint
from masksam.networks.mask_decoder import AdaptedTwoWayTransformer, hypernetwork_masks
from masksam.networks.settings import RecordsBuildSettings, records_build_settings

__all__ = ["MASAM", "SemanticMaskDecoder", "build_ma_sam", "progressive_upscaling"]

logger = logging.getLogger(__name__)


def progressive_upscaling(upscaling: nn.Sequential, num_stages: int) -> nn.Sequential:
    """SAM's output up-scaling extended to ``num_stages`` x2 transposed convolutions (MA-SAM).

    SAM's is ``ConvT(C, C/4), LayerNorm2d, GELU, ConvT(C/4, C/8), GELU`` (x4). Stage ``i`` maps to
    ``C / 2^(i+2)`` channels, with ``LayerNorm2d`` and GELU between stages and GELU after the last; the
    first two stages keep SAM's (pretrained) convolutions and first norm, the others are new. With 2 stages
    this is SAM's module itself.

    Args:
        upscaling: SAM's ``mask_decoder.output_upscaling``.
        num_stages: number of x2 stages (>= 2): ``log2`` of the encoder's stride to reach its input size.

    Returns:
        ``(N, C, h, w) -> (N, C / 2^(num_stages+1), h * 2^num_stages, w * 2^num_stages)``.
    """
    if num_stages < 2:
        raise ValueError(f"progressive up-scaling needs at least SAM's 2 stages, got {num_stages}")
    if num_stages == 2:
        return upscaling
    conv1, norm1, conv2 = upscaling[0], upscaling[1], upscaling[3]
    width = conv2.out_channels
    layers: list[nn.Module] = [conv1, norm1, nn.GELU(), conv2]
    for _ in range(num_stages - 2):
        if width < 2:
            raise ValueError(f"{num_stages} up-scaling stages halve {conv1.in_channels} channels below 1")
        layers += [LayerNorm2d(width), nn.GELU(), nn.ConvTranspose2d(width, width // 2, kernel_size=2, stride=2)]
        width //= 2
    layers.append(nn.GELU())
    return nn.Sequential(*layers)


class SemanticMaskDecoder(nn.Module):
    """SAM's mask decoder, fine-tuned, with one mask token per class and all of them output (MA-SAM).

    Tokens ``[iou, K mask tokens]`` (no sparse prompt) attend to the image embedding in SAM's two-way
    transformer; each class's hypernetwork MLP dots its token with the progressively up-scaled image tokens.
    The transformer, the IoU token and the up-scaling's first stages keep SAM's weights; the K mask tokens and
    hypernetworks are new (the pretrained ones are 4 tokens of another task, as in the research code).

    Args:
        mask_decoder: a finished ``segment_anything`` ``MaskDecoder``; its transformer, IoU token and
            up-scaling are used (and trained).
        num_classes: K, background included.
        num_upscaling: x2 up-scaling stages (:func:`progressive_upscaling`; 4 for a stride-16 encoder).
        gradient_checkpointing: recompute each two-way layer and the mask product in the backward pass.
    """

    def __init__(
        self, mask_decoder: MaskDecoder, num_classes: int, num_upscaling: int, gradient_checkpointing: bool = False
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes (background included) must be >= 2, got {num_classes}")
        dim = mask_decoder.transformer_dim
        self.transformer = AdaptedTwoWayTransformer(
            mask_decoder.transformer, gradient_checkpointing=gradient_checkpointing
        )
        self.iou_token = mask_decoder.iou_token
        self.mask_tokens = nn.Embedding(num_classes, dim)
        self.output_upscaling = progressive_upscaling(mask_decoder.output_upscaling, num_upscaling)
        out = [m for m in self.output_upscaling if isinstance(m, nn.ConvTranspose2d)][-1].out_channels
        self.hypernetworks = nn.ModuleList(MLP(dim, dim, out, 3) for _ in range(num_classes))
        self.num_classes = num_classes

    def forward(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, num_slices: int = 1) -> torch.Tensor:
        """Decode every slice.

        Args:
            image_embeddings: ``(N, C, h, w)`` image embeddings with the dense prompt added.
            image_pe: ``(1, C, h, w)`` SAM's dense positional encoding.
            num_slices: slices per stack (passed to the transformer's adapter slots).

        Returns:
            ``(N, K, h * 2^n, w * 2^n)`` class logits (``n`` up-scaling stages).
        """
        n, _, h, w = image_embeddings.shape
        tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0).expand(n, -1, -1)
        queries, keys = self.transformer(image_embeddings, image_pe, tokens, num_slices)
        return maybe_checkpoint(
            self.transformer.gradient_checkpointing,  # the switch of the whole decoder
            hypernetwork_masks,
            self.output_upscaling,
            self.hypernetworks,
            queries[:, 1:],
            keys,
            (h, w),
        )


class MASAM(RecordsBuildSettings):
    """The MA-SAM network, assembled from finished parts (see :func:`build_ma_sam`).

    Args:
        encoder: a slice-stack encoder of :func:`masksam.backbones.build_encoder3d` with MA-SAM's adapters.
        prompt_encoder: SAM's ``PromptEncoder``; only its no-mask embedding (trained) and dense positional
            encoding are used.
        decoder: :class:`SemanticMaskDecoder` up-scaling to the input size.
        in_channels: input channels; a 1x1x1 convolution (trained, initialised to the channel mean repeated
            three times: the grey slice copied to RGB, as in the research code) makes SAM's 3 channels.
        num_slices: T, slices per stack; stored with the model (training and inference must agree).
        image_size: in-plane size S.
    """

    def __init__(
        self,
        encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        decoder: SemanticMaskDecoder,
        in_channels: int,
        num_slices: int,
        image_size: int,
    ) -> None:
        super().__init__()
        if in_channels < 1 or num_slices < 1:
            raise ValueError(f"in_channels and num_slices must be >= 1, got {in_channels} and {num_slices}")
        self.input_projection = nn.Conv3d(in_channels, 3, kernel_size=1)
        nn.init.constant_(self.input_projection.weight, 1.0 / in_channels)
        nn.init.zeros_(self.input_projection.bias)
        self.encoder = encoder
        self.prompt_encoder = prompt_encoder
        self.decoder = decoder
        self.in_channels = in_channels
        self.num_slices = num_slices
        self.image_size = image_size
        self.num_classes = decoder.num_classes

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Switch activation checkpointing of the encoder blocks and the decoder layers and mask product."""
        self.encoder.gradient_checkpointing = enabled
        self.decoder.transformer.gradient_checkpointing = enabled

    def trainable_modules(self) -> list[nn.Module]:
        """Modules that train entirely besides every :class:`Adapter`: input projection, no-mask embedding, decoder."""
        return [self.input_projection, self.prompt_encoder.no_mask_embed, self.decoder]

    def mark_trainable(self) -> tuple[int, int]:
        """Freeze SAM's encoder and prompt encoder, train the rest; returns ``(total, trainable)`` counts."""
        return mark_trainable(self, types=(Adapter,), modules=self.trainable_modules())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, C_in, S, S, T)`` (MONAI layout, slices last) -> class logits ``(B, K, S, S, T)``."""
        if x.ndim != 5:
            raise ValueError(f"MA-SAM expects (B, C, H, W, D) stacks, got shape {tuple(x.shape)}")
        b, c, h, w, t = x.shape
        if c != self.in_channels or t != self.num_slices or h != self.image_size or w != self.image_size:
            raise ValueError(
                f"MA-SAM was built for {self.in_channels}-channel stacks of {self.image_size}x{self.image_size}x"
                f"{self.num_slices} (H x W x slices), got {c} channels of {h}x{w}x{t}; use a slice-window "
                "inferer with this roi_size"
            )
        rgb = self.input_projection(x).permute(0, 4, 1, 2, 3).reshape(b * t, 3, h, w)
        embedding = self.encoder(rgb, t)[-1]  # (B*T, C, h', w')
        embedding = embedding + self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        logits = self.decoder(embedding, self.prompt_encoder.get_dense_pe(), t)  # (B*T, K, S, S)
        return logits.reshape(b, t, *logits.shape[1:]).permute(0, 2, 3, 4, 1)


@records_build_settings("checkpoint", "gradient_checkpointing", "compile")
def build_ma_sam(
    backbone: str = "vit_b",
    checkpoint: str | os.PathLike[str] | None = None,
    image_size: int = 512,
    in_channels: int = 1,
    num_classes: int = 13,
    num_slices: int = 5,
    fact_rank: int = 32,
    fact_dropout: float = 0.1,
    adapter_dim: int = 384,
    adapter_kernel_size: int = 3,
    gradient_checkpointing: bool = False,
    compile: bool = False,
) -> MASAM:
    """Build MA-SAM on a SAM-family backbone and mark what trains.

    Args:
        backbone: ``vit_b``, ``vit_l``, ``vit_h``, ``medsam``, ``lite_medsam`` or ``tiny``.
        checkpoint: official-format SAM/MedSAM/LiteMedSAM weights (a path; nothing is downloaded).
        image_size: in-plane size S (multiple of 16; of 64 for ``lite_medsam``).
        in_channels: input channels (modalities).
        num_classes: K, background included (BTCV in the paper: 12 organs + background).
        num_slices: T, slices per stack (paper: 5).
        fact_rank: r of the FacT-TT factors (paper: 32).
        fact_dropout: dropout between FacT's per-block core and the shared ``V`` (paper: 0.1).
        adapter_dim: hidden width of the 3D adapters, the same for every backbone (paper: 384).
        adapter_kernel_size: extent of the adapters' convolution across slices (paper: 3).
        gradient_checkpointing: recompute each encoder block, decoder layer and the mask product in the
            backward pass (training memory).
        compile: compile the forward with ``torch.compile`` in place (parameter names and state dicts stay
            those of the plain network); the first call of each input shape compiles.

    Returns:
        the network, with its build settings recorded (all arguments except ``checkpoint``,
        ``gradient_checkpointing`` and ``compile``; see :mod:`masksam.networks.settings`).
    """
    sam = build_sam(backbone, image_size=image_size, checkpoint=checkpoint)
    encoder = build_encoder3d(
        sam.image_encoder,
        ma_sam_block_adapters(
            rank=fact_rank, hidden_dim=adapter_dim, kernel_size=adapter_kernel_size, fact_dropout=fact_dropout
        ),
    )
    model = MASAM(
        encoder=encoder,
        prompt_encoder=sam.prompt_encoder,
        decoder=SemanticMaskDecoder(
            sam.mask_decoder, num_classes, num_upscaling=int(math.log2(encoder.feature_strides[-1]))
        ),
        in_channels=in_channels,
        num_slices=num_slices,
        image_size=image_size,
    )
    model.set_gradient_checkpointing(gradient_checkpointing)
    model.mark_trainable()
    logger.debug("%s", format_parameter_counts(model, f"MA-SAM[{backbone}]"))
    if compile:
        model.compile()
    return model
