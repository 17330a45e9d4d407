# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""The sets of adapters composed into one encoder block (:class:`BlockAdapters`, see
:class:`masksam.backbones.AdaptedBlock`) and one two-way decoder layer (:class:`DecoderAdapters`, see
:class:`masksam.networks.AdaptedTwoWayTransformer`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

__all__ = ["BlockAdapterFactory", "BlockAdapters", "DecoderAdapters"]


class BlockAdapters(nn.Module):
    """The adapters of one encoder block (SAM ViT or TinyViT); each slot is optional.

    Slots (all return deltas that the block adds; all take ``(tokens, num_slices)`` unless noted):
        pre_attn: on the residual stream before attention (MA-SAM's first 3D adapter).
        qkv: low-rank update of the qkv projection, called on the normalised tokens only (FacT, LoRA).
        post_attn: on the attention output ``a``, giving ``a + post_attn(a)`` (MaskSAM/Med-SA space adapter).
        depth_attn: ``depth_attn(norm1(x), attend, num_slices)`` with ``attend`` the block's frozen attention,
            added to the attention branch (Med-SA SD-Trans).
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


#: Makes the adapters of an encoder's blocks from their token widths, one entry per block in order (None: that
#: block stays as it is). Called once per encoder, so adapters shared across blocks are shared within it only.
BlockAdapterFactory = Callable[[Sequence[int]], Sequence["BlockAdapters | None"]]


class DecoderAdapters(nn.Module):
    """The adapters of one two-way attention layer; each slot is optional and returns a delta.

    Slots (all called as ``adapter(x, num_slices)``, or ``adapter(x, num_slices, prompt)`` with the problems' prompt
    embeddings ``(N, C)`` for a :class:`~masksam.adapters.PromptConditionedAdapter` such as Med-SA's HyP-Adpt):
        self_attn: on the token self-attention output ``(N, T, C)``, added beside it.
        token_to_image: on the token-to-image attention output ``(N, T, C)``, added beside it.
        mlp: on the tokens entering the token MLP ``(N, T, C)``, added as ``mlp_scale * mlp(.)`` beside it.
        image_to_token: on the image-to-token attention output as a channels-last grid ``(N, h, w, C)``.
    """

    def __init__(
        self,
        self_attn: nn.Module | None = None,
        token_to_image: nn.Module | None = None,
        mlp: nn.Module | None = None,
        image_to_token: nn.Module | None = None,
        mlp_scale: float = 0.5,
    ) -> None:
        super().__init__()
        self.self_attn = self_attn
        self.token_to_image = token_to_image
        self.mlp = mlp
        self.image_to_token = image_to_token
        self.mlp_scale = mlp_scale
