# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""MaskSAM's prompt generator: a UNETR-like 3D CNN over the image encoder's multi-level features.

It decodes the encoder features of a stack of slices to full resolution and emits, per slice and per
query, an auxiliary mask (logits), an auxiliary box and an auxiliary classifier token. Tensors inside
are ``(B, C, D, H, W)`` (slice axis before the in-plane axes) so that in-plane up-sampling is a
``(1, 2, 2)`` transposed convolution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import nn

from masksam.backbones.checkpointing import maybe_checkpoint

__all__ = ["PromptGenerator3D", "conv_block", "learned_box"]


def conv_block(in_channels: int, out_channels: int) -> Convolution:
    """3x3x3 convolution, instance norm, LeakyReLU (MONAI ``Convolution``)."""
    act = ("leakyrelu", {"negative_slope": 0.01, "inplace": True})
    return Convolution(3, in_channels, out_channels, kernel_size=3, norm="instance", act=act)


def _up(in_channels: int, out_channels: int) -> nn.ConvTranspose3d:
    """In-plane up-sampling x2: a ``(1, 2, 2)`` transposed convolution of stride ``(1, 2, 2)``."""
    return nn.ConvTranspose3d(in_channels, out_channels, kernel_size=(1, 2, 2), stride=(1, 2, 2))


def _num_doublings(ratio: float, what: str) -> int:
    n = math.log2(ratio)
    if n < 0 or n != int(n):
        raise ValueError(f"{what} must be a power-of-two ratio >= 1, got {ratio}")
    return int(n)


def learned_box(raw: torch.Tensor) -> torch.Tensor:
    """Map four numbers in [0, 1] ``(x1, y1, a, b)`` to a valid box ``(x1, y1, x1 + (1-x1) a, y1 + (1-y1) b)``."""
    x1, y1, a, b = raw.unbind(-1)
    return torch.stack([x1, y1, x1 + (1 - x1) * a, y1 + (1 - y1) * b], dim=-1)


class _Skip(nn.Sequential):
    """Project an encoder feature to ``out_channels`` and up-sample it ``num_up`` times in-plane."""

    def __init__(self, in_channels: int, out_channels: int, num_up: int) -> None:
        layers: list[nn.Module] = []
        c = in_channels
        for _ in range(num_up):
            layers += [_up(c, out_channels), conv_block(out_channels, out_channels)]
            c = out_channels
        if not layers:
            layers = [conv_block(in_channels, out_channels)]
        super().__init__(*layers)


class PromptGenerator3D(nn.Module):
    """Decode encoder features into auxiliary masks, boxes and classifier tokens.

    The neck feature (last) starts the decoder; each following stage doubles the in-plane resolution and
    fuses one earlier encoder feature (deepest first), until stride 1.

    Args:
        feature_channels: channels of the encoder features, neck last (``encoder.feature_channels``).
        feature_strides: their in-plane strides (``encoder.feature_strides``); the neck's must be a power of 2.
        num_queries: Q.
        token_dim: width of the classifier tokens (the SAM decoder width, 256); must be a square number.
        widths: channels of the neck stage and of each up-sampling stage (default ``[192, 96, 96, 48, 48]``
            truncated to the number of stages, which keeps MaskSAM ViT-H near the paper's ~14 M trainable
            parameters; the research code used ``[256, 128, 128, 64, 64]``).
        box_pool: in-plane size the stage outputs are pooled to for the box head (2 -> 4 numbers per box).
        gradient_checkpointing: recompute the activations of each layer in the backward pass (training memory).
    """

    def __init__(
        self,
        feature_channels: Sequence[int],
        feature_strides: Sequence[int],
        num_queries: int,
        token_dim: int = 256,
        widths: Sequence[int] | None = None,
        box_pool: int = 2,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if len(feature_channels) != len(feature_strides) or len(feature_channels) < 1:
            raise ValueError(f"feature_channels {feature_channels} and feature_strides {feature_strides} disagree")
        if num_queries <= 0:
            raise ValueError(f"num_queries must be positive, got {num_queries}")
        token_side = math.isqrt(token_dim)
        if token_side * token_side != token_dim:
            raise ValueError(f"token_dim must be a square number (tokens are pooled s x s maps), got {token_dim}")
        if box_pool * box_pool != 4:
            raise ValueError(f"box_pool must be 2 (four numbers per box), got {box_pool}")
        num_stages = _num_doublings(feature_strides[-1], "the neck stride")
        skips = list(zip(feature_channels[:-1], feature_strides[:-1], strict=True))[::-1][:num_stages]
        if len(skips) < num_stages:
            raise ValueError(f"{num_stages} up-sampling stages need {num_stages} skip features, got {len(skips)}")
        widths = list(widths) if widths is not None else [192, 96, 96, 48, 48, 48][: num_stages + 1]
        if len(widths) != num_stages + 1:
            raise ValueError(
                f"widths needs {num_stages + 1} entries for a neck stride {feature_strides[-1]}, got {widths}"
            )
        self.num_queries = num_queries
        self.token_side = token_side
        self.neck_stage = conv_block(feature_channels[-1], widths[0])
        self.ups = nn.ModuleList()
        self.skips = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for s, (skip_channels, skip_stride) in enumerate(skips, start=1):
            target_stride = feature_strides[-1] // 2**s
            self.ups.append(_up(widths[s - 1], widths[s]))
            self.skips.append(
                _Skip(skip_channels, widths[s], _num_doublings(skip_stride / target_stride, "skip stride"))
            )
            self.fuse.append(conv_block(2 * widths[s], widths[s]))
        total = sum(widths)
        self.mask_head = nn.Conv3d(widths[-1], num_queries, kernel_size=1)
        self.box_head = nn.Sequential(
            nn.Conv3d(total, num_queries, kernel_size=1), nn.InstanceNorm3d(num_queries, affine=True)
        )
        self.token_head = nn.Sequential(
            nn.Conv3d(total, num_queries, kernel_size=3, padding=1),
            nn.InstanceNorm3d(num_queries, affine=True),
            nn.GELU(),
        )
        self.box_pool = box_pool
        self.gradient_checkpointing = gradient_checkpointing

    def forward(self, feats: Sequence[torch.Tensor], num_slices: int) -> dict[str, torch.Tensor]:
        """Run the generator on the encoder features of ``B`` stacks of ``D = num_slices`` slices.

        Args:
            feats: encoder features ``(B*D, C_i, h_i, w_i)``, channels-first, neck last.
            num_slices: D.

        Returns:
            ``aux_masks`` ``(B, Q, D, H, W)`` logits at stride 1, ``aux_boxes`` ``(B, Q, D, 4)`` normalised
            ``(x1, y1, x2, y2)`` with ``x2 >= x1``, ``y2 >= y1``, and ``aux_tokens`` ``(B, Q, D, token_dim)``.
        """

        def stack(f: torch.Tensor) -> torch.Tensor:  # (B*D, C, h, w) -> (B, C, D, h, w)
            n, c, h, w = f.shape
            return f.reshape(n // num_slices, num_slices, c, h, w).transpose(1, 2)

        ckpt = self.gradient_checkpointing
        x = maybe_checkpoint(ckpt, self.neck_stage, stack(feats[-1]))
        stages = [x]
        skip_feats = list(feats[:-1])[::-1]
        for up, skip, fuse, f in zip(self.ups, self.skips, self.fuse, skip_feats, strict=False):
            skipped = stack(f)
            # Conv blocks are recomputed one by one; a transposed convolution keeps its input for its weight
            # gradient anyway, so recomputing it would save nothing.
            for layer in skip:
                skipped = maybe_checkpoint(ckpt and isinstance(layer, Convolution), layer, skipped)
            x = maybe_checkpoint(ckpt, fuse, torch.cat([up(x), skipped], dim=1))
            stages.append(x)
        d = x.shape[2]
        side, box = self.token_side, self.box_pool
        box_in = torch.cat([F.adaptive_avg_pool3d(s, (d, box, box)) for s in stages], dim=1)
        token_in = torch.cat([F.adaptive_avg_pool3d(s, (d, side, side)) for s in stages], dim=1)
        raw = torch.sigmoid(self.box_head(box_in))  # (B, Q, D, 2, 2)
        boxes = learned_box(raw.flatten(3))
        tokens = self.token_head(token_in).flatten(3)  # (B, Q, D, side*side)
        return {"aux_masks": self.mask_head(x), "aux_boxes": boxes, "aux_tokens": tokens}
