# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Medical SAM Adapter (Med-SA; Wu et al., MedIA 2025): prompted SAM for volumes.

SAM's encoder stays frozen; each block carries a bottleneck adapter on its attention output, one beside its
MLP (x0.5) and Space-Depth Transpose (the block's own frozen attention run across the D slices of a stack on
the full token grid, followed by a depth adapter). The prompt encoder is frozen; each two-way layer of the
mask decoder carries the Hyper-Prompting adapter (weights generated from the prompt) and two bottleneck
adapters. Every adapter starts as a zero delta, so an untrained Med-SA computes exactly what its SAM does.

Prompts are data (SAM's own encoding, in the input stack's voxel grid): per slice ``P`` tokens of
``(i, j)`` coordinates (array dims 0 and 1 of the ``(S, S)`` slice) with labels 1 foreground click,
0 background click, 2 and 3 box corners ``(i0, j0)`` and ``(i1, j1)``, -1 padding. A slice whose labels are
all -1 has no prompt: it is not decoded and its logits are :data:`NO_PROMPT_LOGIT` (background). Padding
columns that pad every decoded slice are dropped, so a box alone is decoded exactly as SAM decodes it. One
binary mask per stack: the structure the prompts point at.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder, PromptEncoder
from torch import nn

from masksam.adapters import (
    Adapter,
    format_parameter_counts,
    mark_trainable,
    med_sa_block_adapters,
    med_sa_decoder_adapters,
)
from masksam.backbones import build_encoder3d, build_sam
from masksam.networks.mask_decoder import AdaptedTwoWayTransformer, hypernetwork_masks
from masksam.networks.settings import RecordsBuildSettings, records_build_settings

__all__ = [
    "NO_PROMPT_LOGIT",
    "MedSA",
    "PromptedMaskDecoder",
    "PromptedSliceNetwork",
    "build_med_sa",
    "embed_sparse_prompts",
    "prompted_slice_inputs",
]

logger = logging.getLogger(__name__)

#: Logit of every voxel of a slice without a prompt (sigmoid ~2e-9: background).
NO_PROMPT_LOGIT = -20.0


def embed_sparse_prompts(prompt_encoder: PromptEncoder, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """SAM's sparse prompt embedding of clicks and box corners given as one labelled point set.

    Equal to ``PromptEncoder`` on the same points and box (SAM embeds a box as two corner points with the
    point embeddings 2 and 3), but with a fixed number of tokens per problem, so that problems with different
    prompts batch together.

    Args:
        prompt_encoder: SAM's (frozen) prompt encoder.
        coords: ``(N, P, 2)`` pixel coordinates ``(x, y)`` in the encoder's input frame (SAM's convention).
        labels: ``(N, P)`` integer labels: 1 / 0 clicks, 2 / 3 box corners, -1 padding.

    Returns:
        ``(N, P, C)`` sparse embeddings.
    """
    if coords.ndim != 3 or coords.shape[-1] != 2 or labels.shape != coords.shape[:2]:
        raise ValueError(
            f"expected coords (N, P, 2) and labels (N, P), got {tuple(coords.shape)} and {tuple(labels.shape)}"
        )
    num_embeddings = len(prompt_encoder.point_embeddings)
    if labels.numel() and (labels.min() < -1 or labels.max() >= num_embeddings):
        raise ValueError(f"prompt labels must be in -1..{num_embeddings - 1}, got {sorted(labels.unique().tolist())}")
    pe = prompt_encoder.pe_layer.forward_with_coords(coords.float() + 0.5, prompt_encoder.input_image_size)
    table = torch.cat([e.weight for e in prompt_encoder.point_embeddings], dim=0).to(pe.dtype)  # (4, C)
    kind = table[labels.clamp(min=0).long()]
    padding = prompt_encoder.not_a_point_embed.weight.to(pe.dtype)
    return torch.where((labels < 0)[..., None], padding, pe + kind)


def _compact(coords: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each problem's prompt tokens before its padding and drop padding columns shared by all problems.

    Padding tokens are SAM's not-a-point embedding and do take part in attention; dropping the columns that
    pad every problem makes e.g. a box alone decode exactly as SAM decodes it.
    """
    order = torch.argsort((labels < 0).to(torch.int8), dim=1, stable=True)
    labels = torch.gather(labels, 1, order)
    coords = torch.gather(coords, 1, order.unsqueeze(-1).expand(-1, -1, 2))
    keep = int((labels >= 0).sum(dim=1).max())
    return coords[:, :keep], labels[:, :keep]


def prompted_slice_inputs(
    prompt_encoder: PromptEncoder,
    embeddings: torch.Tensor,
    coords: torch.Tensor,
    labels: torch.Tensor,
    mask_inputs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The decoder inputs of the slices that have a prompt (the prompt contract of the prompted networks).

    Args:
        prompt_encoder: SAM's prompt encoder.
        embeddings: ``(N, C, h, w)`` image embeddings of N slices.
        coords: ``(N, P, 2)`` ``(i, j)`` voxel coordinates on the ``(S, S)`` slices.
        labels: ``(N, P)`` prompt labels (module docstring).
        mask_inputs: optional ``(N, 1, 4h, 4w)`` previous mask logits (SAM's dense prompt).

    Returns:
        None when no slice has a prompt, else ``(idx, image, sparse, labels)``: the indices ``(M,)`` of the
        prompted slices, their embeddings with the dense prompt added ``(M, C, h, w)``, their sparse prompt tokens
        ``(M, P', C)`` and labels ``(M, P')`` (padding columns shared by all of them dropped).
    """
    n = embeddings.shape[0]
    if coords.shape[:1] != (n,) or labels.shape != coords.shape[:2] or coords.shape[-1] != 2:
        raise ValueError(
            f"{n} slice embeddings need coords (N, P, 2) and labels (N, P), got {tuple(coords.shape)} and "
            f"{tuple(labels.shape)}"
        )
    prompted = (labels >= 0).any(dim=1)
    if not bool(prompted.any()):
        return None
    idx = prompted.nonzero().squeeze(1)
    coords, labels = _compact(coords[idx], labels[idx])
    sparse = embed_sparse_prompts(prompt_encoder, coords.flip(-1), labels)  # (i, j) -> SAM's (x, y)
    h, w = embeddings.shape[-2:]
    if mask_inputs is not None:
        dense = prompt_encoder.mask_downscaling(mask_inputs[idx].to(embeddings.dtype))
    else:
        dense = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(len(idx), -1, h, w)
    return idx, embeddings[idx] + dense.to(embeddings.dtype), sparse, labels


class PromptedMaskDecoder(nn.Module):
    """SAM's mask decoder with adapter slots, one mask per problem (SAM's first mask token).

    Args:
        mask_decoder: a finished ``segment_anything`` ``MaskDecoder`` (its transformer, tokens, up-scaling and
            first hypernetwork are used).
        layer_adapters: :class:`~masksam.adapters.DecoderAdapters` of each two-way layer (Med-SA's preset).
        gradient_checkpointing: recompute each two-way layer in the backward pass.
    """

    def __init__(
        self, mask_decoder: MaskDecoder, layer_adapters: list | None = None, gradient_checkpointing: bool = False
    ) -> None:
        super().__init__()
        self.transformer = AdaptedTwoWayTransformer(
            mask_decoder.transformer, layer_adapters, gradient_checkpointing=gradient_checkpointing
        )
        self.iou_token = mask_decoder.iou_token
        self.mask_tokens = mask_decoder.mask_tokens
        self.output_upscaling = mask_decoder.output_upscaling
        self.hypernetwork = mask_decoder.output_hypernetworks_mlps[0]

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        prompt_embedding: torch.Tensor,
        num_slices: int = 1,
    ) -> torch.Tensor:
        """Decode ``N`` problems.

        Args:
            image_embeddings: ``(N, C, h, w)`` with the dense prompt added.
            image_pe: ``(1, C, h, w)`` SAM's dense positional encoding.
            sparse: ``(N, P, C)`` sparse prompt tokens (:func:`embed_sparse_prompts`).
            prompt_embedding: ``(N, C)`` one embedding per problem for prompt-conditioned adapters.
            num_slices: passed to the adapter slots.

        Returns:
            ``(N, 1, 4h, 4w)`` mask logits.
        """
        n, _, h, w = image_embeddings.shape
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0).expand(n, -1, -1)
        tokens = torch.cat([output_tokens, sparse.to(output_tokens.dtype)], dim=1)
        queries, keys = self.transformer(image_embeddings, image_pe, tokens, num_slices, prompt_embedding)
        return hypernetwork_masks(self.output_upscaling, [self.hypernetwork], queries[:, 1:2], keys, (h, w))


class PromptedSliceNetwork(RecordsBuildSettings, ABC):
    """Base of the prompted slice-stack networks (Med-SA, SAM-UNet): input checks, SAM's image normalisation and
    :meth:`forward` over the subclass's :meth:`encode` / :meth:`decode` (the interface of
    :class:`masksam.inferers.PromptedVolumePredictor`).

    Args:
        pixel_mean: SAM's per-channel mean on a 0-255 scale (3 values).
        pixel_std: SAM's per-channel std on a 0-255 scale.
        in_channels: input channels; their mean, in [0, 1], is SAM's grey image (copied to RGB).
        num_slices: D, slices per stack; stored with the model.
        image_size: in-plane size S of the input stacks.
    """

    #: Name used in error messages.
    method_name = "this network"

    def __init__(
        self, pixel_mean: torch.Tensor, pixel_std: torch.Tensor, in_channels: int, num_slices: int, image_size: int
    ) -> None:
        super().__init__()
        if in_channels < 1 or num_slices < 1:
            raise ValueError(f"in_channels and num_slices must be >= 1, got {in_channels} and {num_slices}")
        self.register_buffer("pixel_mean", torch.as_tensor(pixel_mean, dtype=torch.float32).reshape(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.as_tensor(pixel_std, dtype=torch.float32).reshape(1, 3, 1, 1), False)
        self.in_channels = in_channels
        self.num_slices = num_slices
        self.image_size = image_size

    def _check_stack(self, x: torch.Tensor) -> None:
        if x.ndim != 5:
            raise ValueError(f"{self.method_name} expects (B, C, H, W, D) stacks, got shape {tuple(x.shape)}")
        _, c, h, w, t = x.shape
        if c != self.in_channels or t != self.num_slices or h != self.image_size or w != self.image_size:
            raise ValueError(
                f"{self.method_name} was built for {self.in_channels}-channel stacks of {self.image_size}x"
                f"{self.image_size}x{self.num_slices} (H x W x slices), got {c} channels of {h}x{w}x{t}; resize "
                f"slices to {self.image_size} and cut volumes into stacks of {self.num_slices} "
                "(PromptedVolumePredictor does)"
            )

    def sam_slices(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, C_in, S, S, D)`` intensities in [0, 1] -> SAM-normalised RGB slices ``(B*D, 3, S, S)`` (``n = b*D + d``)."""
        self._check_stack(x)
        b, _, s, _, t = x.shape
        grey = x.mean(dim=1).permute(0, 3, 1, 2).reshape(b * t, 1, s, s).to(self.pixel_mean.dtype)
        return (255.0 * grey - self.pixel_mean) / self.pixel_std  # in the network's dtype, whatever the input's

    @abstractmethod
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, C_in, S, S, D)`` -> per-slice embeddings ``(B*D, C, h, w)``: whatever :meth:`decode` needs."""
        raise NotImplementedError

    @abstractmethod
    def decode(
        self,
        embeddings: torch.Tensor,
        coords: torch.Tensor,
        labels: torch.Tensor,
        mask_inputs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(N, C, h, w)`` embeddings of :meth:`encode` with per-slice prompts -> ``(N, 1, 4h, 4w)`` logits."""
        raise NotImplementedError

    def forward(
        self,
        x: torch.Tensor,
        prompt_coords: torch.Tensor,
        prompt_labels: torch.Tensor,
        mask_inputs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Segment the structure the prompts point at in each stack.

        Args:
            x: ``(B, C_in, S, S, D)`` intensities in [0, 1], MONAI layout (slices last).
            prompt_coords: ``(B, D, P, 2)`` per-slice ``(i, j)`` voxel coordinates.
            prompt_labels: ``(B, D, P)`` per-slice prompt labels (module docstring).
            mask_inputs: optional ``(B, D, 1, 4h, 4w)`` previous low-resolution logits per slice (SAM's dense
                prompt; ``h`` the image embedding's side).

        Returns:
            ``(B, 1, S, S, D)`` mask logits.
        """
        self._check_stack(x)
        b, _, s, _, t = x.shape
        if prompt_coords.shape[:2] != (b, t) or prompt_labels.shape != prompt_coords.shape[:3]:
            raise ValueError(
                f"prompts for {b} stacks of {t} slices must be (B, D, P, 2) coords and (B, D, P) labels, got "
                f"{tuple(prompt_coords.shape)} and {tuple(prompt_labels.shape)}"
            )
        embeddings = self.encode(x)
        masks = None if mask_inputs is None else mask_inputs.reshape(b * t, *mask_inputs.shape[2:])
        low = self.decode(embeddings, prompt_coords.reshape(b * t, -1, 2), prompt_labels.reshape(b * t, -1), masks)
        logits = F.interpolate(low, size=(s, s), mode="bilinear", align_corners=False) if low.shape[-1] != s else low
        return logits.reshape(b, t, 1, s, s).permute(0, 2, 3, 4, 1)


class MedSA(PromptedSliceNetwork):
    """The Med-SA network, assembled from finished parts (see :func:`build_med_sa`).

    Args:
        encoder: a slice-stack encoder of :func:`masksam.backbones.build_encoder3d` with Med-SA's adapters.
        prompt_encoder: SAM's ``PromptEncoder`` (frozen).
        decoder: :class:`PromptedMaskDecoder`.
        pixel_mean: SAM's per-channel mean on a 0-255 scale (3 values).
        pixel_std: SAM's per-channel std on a 0-255 scale.
        in_channels: input channels; their mean, in [0, 1], is SAM's grey image (copied to RGB).
        num_slices: D, slices per stack seen by Space-Depth Transpose; stored with the model.
        image_size: in-plane size S of the input stacks.
    """

    method_name = "Med-SA"

    def __init__(
        self,
        encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        decoder: PromptedMaskDecoder,
        pixel_mean: torch.Tensor,
        pixel_std: torch.Tensor,
        in_channels: int,
        num_slices: int,
        image_size: int,
    ) -> None:
        super().__init__(pixel_mean, pixel_std, in_channels, num_slices, image_size)
        self.encoder = encoder
        self.prompt_encoder = prompt_encoder
        self.decoder = decoder
        self.train_decoder = False

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Switch activation checkpointing of the encoder blocks and the decoder layers."""
        self.encoder.gradient_checkpointing = enabled
        self.decoder.transformer.gradient_checkpointing = enabled

    def mark_trainable(self, train_decoder: bool = False) -> tuple[int, int]:
        """Train every :class:`Adapter` (and SAM's whole mask decoder when ``train_decoder``, as the research
        code does); freeze the rest. Returns ``(total, trainable)`` counts."""
        self.train_decoder = train_decoder
        return mark_trainable(self, types=(Adapter,), modules=[self.decoder] if train_decoder else [])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, C_in, S, S, D)`` intensities in [0, 1] -> image embeddings ``(B*D, C, h, w)`` (slice ``n = b*D + d``)."""
        return self.encoder(self.sam_slices(x), x.shape[-1])[-1]

    def decode(
        self,
        embeddings: torch.Tensor,
        coords: torch.Tensor,
        labels: torch.Tensor,
        mask_inputs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Decode each slice embedding with its prompts; slices without any prompt are not decoded.

        Args:
            embeddings: ``(N, C, h, w)`` image embeddings from :meth:`encode`.
            coords: ``(N, P, 2)`` ``(i, j)`` voxel coordinates on the ``(S, S)`` slices.
            labels: ``(N, P)`` prompt labels (module docstring).
            mask_inputs: optional ``(N, 1, 4h, 4w)`` previous mask logits (SAM's dense prompt), e.g. the output
                of the previous call when a click refines a mask.

        Returns:
            ``(N, 1, 4h, 4w)`` low-resolution mask logits; :data:`NO_PROMPT_LOGIT` on slices without a prompt.
        """
        n, _, h, w = embeddings.shape
        out = embeddings.new_full((n, 1, 4 * h, 4 * w), NO_PROMPT_LOGIT)
        inputs = prompted_slice_inputs(self.prompt_encoder, embeddings, coords, labels, mask_inputs)
        if inputs is None:
            return out
        idx, image, sparse, labels = inputs
        valid = (labels >= 0).unsqueeze(-1).to(sparse.dtype)
        prompt_embedding = (sparse * valid).sum(1) / valid.sum(1)
        pe = self.prompt_encoder.get_dense_pe().to(image.dtype)
        logits = self.decoder(image, pe, sparse, prompt_embedding)
        return out.index_copy(0, idx, logits.to(out.dtype))


@records_build_settings("checkpoint", "gradient_checkpointing", "compile")
def build_med_sa(
    backbone: str = "vit_b",
    checkpoint: str | os.PathLike[str] | None = None,
    image_size: int = 1024,
    in_channels: int = 1,
    num_slices: int = 4,
    adapter_dim: int | None = None,
    adapter_ratio: float = 0.25,
    depth_attention: bool = True,
    decoder_adapter_dim: int = 64,
    hyper_hidden_dim: int = 64,
    train_decoder: bool = False,
    gradient_checkpointing: bool = False,
    compile: bool = False,
) -> MedSA:
    """Build Med-SA on a SAM-family backbone and mark what trains.

    Args:
        backbone: ``vit_b``, ``vit_l``, ``vit_h``, ``medsam``, ``lite_medsam`` or ``tiny``.
        checkpoint: official-format SAM/MedSAM/LiteMedSAM weights (a path; nothing is downloaded).
        image_size: in-plane size S (SAM: 1024; LiteMedSAM: 256).
        in_channels: input channels (averaged into SAM's grey image).
        num_slices: D, slices per stack for Space-Depth Transpose.
        adapter_dim: hidden width of the encoder adapters (default ``adapter_ratio`` x the block width).
        adapter_ratio: hidden width as a fraction of the block width when ``adapter_dim`` is None (paper: 1/4).
        depth_attention: Space-Depth Transpose in every block (False: 2D Med-SA).
        decoder_adapter_dim: hidden width of the decoder adapters (paper: 1/4 of 256).
        hyper_hidden_dim: hidden width of the Hyper-Prompting adapter's weight-generating MLP.
        train_decoder: also train SAM's whole mask decoder (the research code does; the paper trains adapters).
        gradient_checkpointing: recompute encoder blocks and decoder layers in the backward pass.
        compile: compile the forward with ``torch.compile`` in place.

    Returns:
        the network, with its build settings recorded (all arguments except ``checkpoint``,
        ``gradient_checkpointing`` and ``compile``; see :mod:`masksam.networks.settings`).
    """
    sam = build_sam(backbone, image_size=image_size, checkpoint=checkpoint)
    encoder = build_encoder3d(
        sam.image_encoder,
        med_sa_block_adapters(hidden_dim=adapter_dim, hidden_ratio=adapter_ratio, depth_attention=depth_attention),
    )
    mask_decoder = sam.mask_decoder
    decoder = PromptedMaskDecoder(
        mask_decoder,
        med_sa_decoder_adapters(
            mask_decoder.transformer_dim,
            decoder_adapter_dim,
            len(mask_decoder.transformer.layers),
            hyper_hidden_dim=hyper_hidden_dim,
        ),
    )
    model = MedSA(
        encoder=encoder,
        prompt_encoder=sam.prompt_encoder,
        decoder=decoder,
        pixel_mean=sam.pixel_mean,
        pixel_std=sam.pixel_std,
        in_channels=in_channels,
        num_slices=num_slices,
        image_size=image_size,
    )
    model.set_gradient_checkpointing(gradient_checkpointing)
    model.mark_trainable(train_decoder)
    logger.debug("%s", format_parameter_counts(model, f"Med-SA[{backbone}]"))
    if compile:
        model.compile()
    return model
