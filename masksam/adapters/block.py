# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""The set of adapters composed into one ViT block (see :class:`masksam.backbones.AdaptedBlock`)."""

from __future__ import annotations

from torch import nn

__all__ = ["BlockAdapters"]


class BlockAdapters(nn.Module):
    """The adapters of one ViT block; each slot is optional.

    Slots (all return deltas that the block adds; all take ``(tokens, num_slices)`` unless noted):
        pre_attn: on the residual stream before attention (MA-SAM's first 3D adapter).
        qkv: low-rank update of the qkv projection, called on the normalised tokens only (FacT, LoRA).
        post_attn: on the attention output ``a``, giving ``a + post_attn(a)`` (MaskSAM/Med-SA space adapter).
        depth_attn: ``depth_attn(norm1(x), attend, num_slices)`` with ``attend`` the block's frozen attention,, added to the attention branch (Med-SA SD-Trans).
        pre_mlp: on the residual stream before the MLP (MA-SAM's second 3D adapter).
        parallel_mlp: on ``norm2(x)``, added as ``parallel_mlp_scale * parallel_mlp(.)`` beside the MLP.
    """

    def __init__(
        self,
        pre_attn: nn.Module | None = None,
        qkv: nn.Module | None = None,
        post_attn: nn.Module | None = None,
        depth_attn: nn.Module | None = None,
        pre_mlp: nn.Module | None = None,
        parallel_mlp: nn.Module | None = None,
        parallel_mlp_scale: float = 0.5,
    ) -> None:
        super().__init__()
        self.pre_attn = pre_attn
        self.qkv = qkv
        self.post_attn = post_attn
        self.depth_attn = depth_attn
        self.pre_mlp = pre_mlp
        self.parallel_mlp = parallel_mlp
        self.parallel_mlp_scale = parallel_mlp_scale
