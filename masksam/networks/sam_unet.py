# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""SAM-UNet (Yang et al., 2024): a convolutional branch beside SAM's frozen image encoder, multi-scale fusion.

A torchvision ResNet (34 or 50) reads the same SAM-normalised slice as SAM's frozen image encoder; a
:class:`Reshaper` brings each of its four stages to the token grid of one feature level of the encoder, where
the shared encoder adds it (``injections`` of :func:`masksam.backbones.build_encoder3d`: before SAM's
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
import math
import os

import torch
import torch.nn.functional as F
import torchvision
from segment_anything.modeling import MaskDecoder, PromptEncoder
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.mask_decoder import MLP
from torch import nn

from masksam.adapters import format_parameter_counts, mark_trainable
from masksam.backbones import CheckpointError, build_encoder3d, build_sam, read_state_dict
from masksam.networks.mask_decoder import AdaptedTwoWayTransformer, hypernetwork_masks
from masksam.networks.med_sa import NO_PROMPT_LOGIT, PromptedSliceNetwork, prompted_slice_inputs
from masksam.networks.settings import records_build_settings

__all__ = [
    "CNN_BRANCHES",
    "FUSED_FOLD",
    "ResNetBranch",
    "Reshaper",
    "SamUNet",
    "SamUNetDecoder",
    "build_sam_unet",
    "fusion_bridge",
]

logger = logging.getLogger(__name__)

#: The convolutional branches: torchvision ResNets, with their four stages' channels.
CNN_BRANCHES: dict[str, tuple[int, int, int, int]] = {
    "resnet34": (64, 128, 256, 512),
    "resnet50": (256, 512, 1024, 2048),
}

#: Side ratio of the multi-scale feature to the image embedding (SAM's two x2 up-scalings); ``encode`` folds the
#: feature into the embedding's grid with ``pixel_unshuffle`` by this factor.
FUSED_FOLD = 4


def _log2_ratio(a: int, b: int, what: str) -> int:
    """``log2(a / b)`` for strides whose ratio is a power of two (either way round: the sign says which)."""
    big, small = max(a, b), min(a, b)
    steps = int(round(math.log2(big / small)))
    if big % small or 2**steps * small != big:
        raise ValueError(f"{what}: strides {a} and {b} differ by a factor that is not a power of two")
    return steps if a >= b else -steps


class ResNetBranch(nn.Module):
    """A torchvision ResNet without its head, returning its four stages' outputs.

    The modules keep torchvision's names (``conv1``, ``bn1``, ``layer1``...), so torchvision-format weights load
    with :meth:`load_torchvision_weights`.

    Args:
        name: ``resnet34`` or ``resnet50`` (:data:`CNN_BRANCHES`); random initialisation (torchvision's).

    Attributes:
        channels: channels of the four stages; strides: their strides (4, 8, 16, 32).
    """

    def __init__(self, name: str = "resnet34") -> None:
        super().__init__()
        if name not in CNN_BRANCHES:
            raise ValueError(f"unknown cnn {name!r}; expected one of {sorted(CNN_BRANCHES)}")
        resnet = getattr(torchvision.models, name)(weights=None)
        self.name = name
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4
        self.channels = list(CNN_BRANCHES[name])
        self.strides = [4, 8, 16, 32]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(N, 3, S, S)`` -> four channels-first features ``(N, channels[k], S / strides[k], S / strides[k])``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            feats.append(x)
        return feats

    def load_torchvision_weights(self, path: str | os.PathLike[str]) -> None:
        """Load a torchvision-format state dict of the same ResNet (its ``fc`` head is ignored); nothing is downloaded.

        Raises:
            CheckpointError: unreadable file, another architecture, or missing/unexpected keys.
        """
        state = {k: v for k, v in read_state_dict(path).items() if not k.startswith("fc.")}
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        shapes = [
            f"{k}: file {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
            for k in own
            if k in state and state[k].shape != own[k].shape
        ]
        if missing or unexpected or shapes:
            raise CheckpointError(
                f"{os.fspath(path)!r} is not a torchvision {self.name} state dict (cnn={self.name!r}): "
                f"{len(missing)} missing keys {missing[:4]}, {len(unexpected)} unexpected keys {unexpected[:4]}, "
                f"{len(shapes)} shape mismatches {shapes[:2]}; give the weights of torchvision.models.{self.name} "
                "or change cnn"
            )
        self.load_state_dict(state)


class Reshaper(nn.Module):
    """Bring a CNN feature to a token grid: stride-2 3x3 convolutions (channels x2, LayerNorm2d, GELU) down, or
    x2 transposed convolutions (channels /2, LayerNorm2d, GELU) up, until the strides agree, then a 1x1 projection.

    The 1x1 projection starts at zero (weights and bias): an untrained reshaper outputs zeros, so what it is added
    to is unchanged at initialisation. The other convolutions are Kaiming-initialised as in the research code.

    Args:
        in_channels: channels of the CNN feature.
        in_stride: its stride.
        out_channels: channels of the target grid.
        out_stride: its stride.
    """

    def __init__(self, in_channels: int, in_stride: int, out_channels: int, out_stride: int) -> None:
        super().__init__()
        steps = _log2_ratio(out_stride, in_stride, "Reshaper")
        layers: list[nn.Module] = []
        width = in_channels
        for _ in range(abs(steps)):
            if steps > 0:
                layers += [nn.Conv2d(width, 2 * width, kernel_size=3, stride=2, padding=1)]
                width *= 2
            else:
                if width < 2:
                    raise ValueError(f"Reshaper: {-steps} up-scalings halve {in_channels} channels below 1")
                layers += [nn.ConvTranspose2d(width, width // 2, kernel_size=2, stride=2)]
                width //= 2
            layers += [LayerNorm2d(width), nn.GELU()]
        self.resample = nn.Sequential(*layers)
        self.project = nn.Conv2d(width, out_channels, kernel_size=1)
        for m in self.resample:
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.project.weight)
        nn.init.zeros_(self.project.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, H, W)`` -> channels-first ``(N, out_channels, H * in_stride / out_stride, ...)``."""
        return self.project(self.resample(x))


def fusion_bridge(in_channels: int, hidden_channels: int, out_channels: int, steps: int) -> nn.Sequential:
    """Up-sample a feature by ``2**steps`` with x2 transposed convolutions (SAM's up-scaling pattern).

    ``steps >= 2``: ``ConvT(in, hidden)``, then ``LayerNorm2d, GELU, ConvT(hidden, hidden)`` repeated, and
    ``LayerNorm2d, GELU, ConvT(hidden, out)`` (the research code's bridges: 2 steps); ``steps == 1``:
    ``ConvT(in, out)``; ``steps == 0``: a 1x1 convolution.
    """
    if steps < 0:
        raise ValueError(f"a fusion bridge up-samples: steps must be >= 0, got {steps}")
    if steps == 0:
        return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size=1))
    if steps == 1:
        return nn.Sequential(nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2))
    layers: list[nn.Module] = [nn.ConvTranspose2d(in_channels, hidden_channels, kernel_size=2, stride=2)]
    for i in range(1, steps):
        out = out_channels if i == steps - 1 else hidden_channels
        layers += [LayerNorm2d(hidden_channels), nn.GELU(), nn.ConvTranspose2d(hidden_channels, out, 2, stride=2)]
    return nn.Sequential(*layers)


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
        fusion_bridge(channels[k], dim, width, _log2_ratio(strides[k], target, f"bridge {k}"))
        for k in range(levels - 1)
    )
    bridges.append(fusion_bridge(channels[-1], dim // 4, width, _log2_ratio(strides[-1], target, "neck bridge")))
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
