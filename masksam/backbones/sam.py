# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Builders for the SAM family (ViT-B/L/H, MedSAM, a tiny test config) and their checkpoint loader.

The models are the `segment_anything.modeling` classes themselves (wrapped, never forked). The
preset sizes live only in :data:`SAM_PRESETS`. Checkpoints in the official format (a plain state dict
with ``image_encoder.*``, ``prompt_encoder.*`` and ``mask_decoder.*`` keys) are loaded by
:func:`load_sam_checkpoint`, which maps keys explicitly, resizes position tables to the model's input
size and fails loudly on anything else.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from torch import nn

__all__ = [
    "SAM_PRESETS",
    "SamPreset",
    "CheckpointError",
    "LoadReport",
    "build_sam",
    "load_sam_checkpoint",
    "read_state_dict",
    "resize_pos_embed",
    "resize_rel_pos",
    "global_attn_indexes",
    "sam_prompt_parts",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamPreset:
    """Sizes of one SAM variant. ``pixel_mean``/``pixel_std`` apply to images on a 0-255 scale."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    window_size: int = 14
    patch_size: int = 16
    prompt_embed_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    mask_in_chans: int = 16
    iou_head_hidden_dim: int = 256
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    pretrain_image_size: int = 1024
    aliases: tuple[str, ...] = field(default_factory=tuple)


SAM_PRESETS: dict[str, SamPreset] = {
    "vit_b": SamPreset(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": SamPreset(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": SamPreset(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
    # MedSAM is a fine-tuned ViT-B in the official format; it expects images scaled to [0, 1].
    "medsam": SamPreset(
        embed_dim=768,
        depth=12,
        num_heads=12,
        global_attn_indexes=(2, 5, 8, 11),
        pixel_mean=(0.0, 0.0, 0.0),
        pixel_std=(255.0, 255.0, 255.0),
    ),
    # Random-init test configuration: 4 blocks, 2-token windows so that windowing is exercised at 64x64.
    "tiny": SamPreset(
        embed_dim=32,
        depth=4,
        num_heads=2,
        global_attn_indexes=(1, 3),
        window_size=2,
        prompt_embed_dim=64,
        decoder_mlp_dim=64,
        decoder_heads=2,
        mask_in_chans=4,
        iou_head_hidden_dim=32,
        pretrain_image_size=64,
    ),
}


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or of another architecture."""


@dataclass
class LoadReport:
    """What :func:`load_sam_checkpoint` did: keys that were missing/unexpected, and tables resized."""

    path: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"loaded {self.path}: {len(self.missing)} missing, {len(self.unexpected)} unexpected, "
            f"{len(self.resized)} resized ({', '.join(self.resized[:4])}{'...' if len(self.resized) > 4 else ''})"
        )


def global_attn_indexes(encoder: ImageEncoderViT) -> tuple[int, ...]:
    """Indexes of the global-attention blocks of a SAM ViT (``window_size == 0``)."""
    return tuple(i for i, blk in enumerate(encoder.blocks) if blk.window_size == 0)


def sam_prompt_parts(preset: SamPreset, image_size: int, grid: int) -> dict[str, nn.Module]:
    """SAM's prompt encoder and mask decoder of ``preset``, for square inputs of ``image_size`` whose image
    embedding is ``grid x grid``: ``{"prompt_encoder": ..., "mask_decoder": ...}`` (keyword arguments of ``Sam``)."""
    return {
        "prompt_encoder": PromptEncoder(
            embed_dim=preset.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=preset.mask_in_chans,
        ),
        "mask_decoder": MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=preset.decoder_depth,
                embedding_dim=preset.prompt_embed_dim,
                mlp_dim=preset.decoder_mlp_dim,
                num_heads=preset.decoder_heads,
            ),
            transformer_dim=preset.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=preset.iou_head_hidden_dim,
        ),
    }


def build_sam(
    name: str = "vit_b",
    image_size: int = 1024,
    checkpoint: str | os.PathLike[str] | None = None,
    strict: bool = True,
) -> Sam:
    """Build a SAM model (image encoder, prompt encoder, mask decoder) for square inputs of ``image_size``.

    Args:
        name: one of :data:`SAM_PRESETS` (``vit_b``, ``vit_l``, ``vit_h``, ``medsam``, ``tiny``) or
            ``lite_medsam`` (TinyViT encoder, see :mod:`masksam.backbones.lite_medsam`).
        image_size: input side in pixels; a multiple of the patch size (16). The absolute position
            embedding and the global blocks' relative-position tables are built for this size and a
            checkpoint's tables are resized to it.
        checkpoint: optional path of an official-format state dict (``sam_vit_b_01ec64.pth``,
            ``medsam_vit_b.pth``...). Nothing is ever downloaded.
        strict: raise on missing or unexpected keys (shape mismatches always raise).

    Returns:
        a ``segment_anything.modeling.Sam`` in eval mode. ``image_encoder(x)`` maps ``(B, 3, S, S)``
        to ``(B, prompt_embed_dim, S/16, S/16)``.
    """
    if name == "lite_medsam":
        from masksam.backbones.lite_medsam import build_lite_medsam

        return build_lite_medsam(image_size=image_size, checkpoint=checkpoint, strict=strict)
    if name not in SAM_PRESETS:
        raise ValueError(f"unknown SAM backbone {name!r}; expected one of {sorted(SAM_PRESETS) + ['lite_medsam']}")
    preset = SAM_PRESETS[name]
    if image_size <= 0 or image_size % preset.patch_size:
        raise ValueError(f"image_size must be a positive multiple of {preset.patch_size}, got {image_size}")
    grid = image_size // preset.patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=image_size,
            patch_size=preset.patch_size,
            embed_dim=preset.embed_dim,
            depth=preset.depth,
            num_heads=preset.num_heads,
            mlp_ratio=4.0,
            out_chans=preset.prompt_embed_dim,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=preset.window_size,
            global_attn_indexes=preset.global_attn_indexes,
        ),
        **sam_prompt_parts(preset, image_size, grid),
        pixel_mean=list(preset.pixel_mean),
        pixel_std=list(preset.pixel_std),
    )
    sam.eval()
    if checkpoint is not None:
        report = load_sam_checkpoint(sam, checkpoint, strict=strict)
        logger.info("%s", report)
    return sam


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict safely (``weights_only=True``, on CPU) from a checkpoint file.

    Accepts a plain state dict or one nested under ``"model"``/``"state_dict"``/``"network"``.

    Raises:
        CheckpointError: the file is missing, is not a PyTorch checkpoint, or holds no tensors.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path!r}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise CheckpointError(f"{path!r} is not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict", "network"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path!r} does not hold a state dict of tensors (found {type(obj).__name__})")
    return dict(obj)


def resize_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize SAM's absolute position embedding ``(1, H, W, C)`` to ``(1, grid[0], grid[1], C)``."""
    if pos_embed.ndim != 4:
        raise ValueError(f"pos_embed must be (1, H, W, C), got shape {tuple(pos_embed.shape)}")
    if tuple(pos_embed.shape[1:3]) == tuple(grid):
        return pos_embed
    x = pos_embed.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=grid, mode="bilinear", align_corners=False)
    return x.permute(0, 2, 3, 1).to(pos_embed.dtype)


def resize_rel_pos(rel_pos: torch.Tensor, length: int) -> torch.Tensor:
    """Linearly resize a relative-position table ``(L, head_dim)`` to ``(length, head_dim)``."""
    if rel_pos.ndim != 2:
        raise ValueError(f"rel_pos must be (L, head_dim), got shape {tuple(rel_pos.shape)}")
    if rel_pos.shape[0] == length:
        return rel_pos
    x = rel_pos.t().unsqueeze(0).float()
    x = F.interpolate(x, size=length, mode="linear", align_corners=False)
    return x.squeeze(0).t().to(rel_pos.dtype)


_PREFIXES = ("module.", "sam.", "model.")


def _map_key(key: str) -> str:
    """Explicit key mapping from the official/wrapped formats onto ``Sam``'s own names."""
    for prefix in _PREFIXES:
        if key.startswith(prefix) and key[len(prefix) :].split(".")[0] in {
            "image_encoder",
            "prompt_encoder",
            "mask_decoder",
        }:
            return key[len(prefix) :]
    return key


def _describe_encoder(state: Mapping[str, torch.Tensor]) -> str:
    """Guess which SAM variant a state dict holds (for error messages)."""
    pe = state.get("image_encoder.pos_embed")
    depth = len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
    if pe is None:
        if any(k.startswith("image_encoder.layers.") for k in state):
            return "a TinyViT (LiteMedSAM-style) encoder"
        return "no SAM ViT image encoder"
    width = pe.shape[-1]
    by_width = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}
    return f"a {by_width.get(width, 'non-standard')} encoder (width {width}, {depth} blocks)"


def load_sam_checkpoint(
    model: nn.Module, path: str | os.PathLike[str], strict: bool = True, state_dict: Mapping[str, Any] | None = None
) -> LoadReport:
    """Load an official-format SAM checkpoint into ``model`` (a ``Sam`` or compatible module).

    Keys are mapped explicitly (``module.``/``sam.`` wrappers stripped), the absolute position embedding
    and relative-position tables whose length differs are resized to the model's size, and every other
    shape must match exactly.

    Args:
        model: the target module.
        path: checkpoint path (also used in messages when ``state_dict`` is given).
        strict: raise when keys are missing or unexpected; otherwise log them.
        state_dict: already-read tensors (skips reading ``path``).

    Returns:
        a :class:`LoadReport`.

    Raises:
        CheckpointError: unreadable file, another architecture (shape mismatch), or missing/unexpected
            keys with ``strict=True``.
    """
    raw = read_state_dict(path) if state_dict is None else dict(state_dict)
    source = {_map_key(k): v for k, v in raw.items()}
    target = model.state_dict()
    report = LoadReport(path=os.fspath(path))
    mismatched: list[str] = []
    loadable: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        if key not in target:
            report.unexpected.append(key)
            continue
        want = target[key].shape
        if value.shape != want:
            if key.endswith("pos_embed") and value.ndim == 4 and value.shape[-1] == want[-1]:
                value = resize_pos_embed(value, (want[1], want[2]))
                report.resized.append(key)
            elif key.endswith(("rel_pos_h", "rel_pos_w")) and value.ndim == 2 and value.shape[1] == want[1]:
                value = resize_rel_pos(value, want[0])
                report.resized.append(key)
            else:
                mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(want)}")
                continue
        loadable[key] = value
    report.missing = sorted(set(target) - set(source))
    if mismatched:
        raise CheckpointError(
            f"{report.path!r} does not fit this architecture: it holds {_describe_encoder(source)}, the model has "
            f"{_describe_encoder(target)}. {len(mismatched)} shape mismatches, e.g. " + "; ".join(mismatched[:3])
        )
    if strict and (report.missing or report.unexpected):
        raise CheckpointError(
            f"{report.path!r} does not match the model: {len(report.missing)} missing keys "
            f"{report.missing[:5]}, {len(report.unexpected)} unexpected keys {report.unexpected[:5]} "
            f"(checkpoint holds {_describe_encoder(source)}; pass strict=False to load the overlap)"
        )
    if report.missing or report.unexpected:
        logger.warning("%s; missing %s; unexpected %s", report, report.missing[:10], report.unexpected[:10])
    model.load_state_dict(loadable, strict=False)
    return report
