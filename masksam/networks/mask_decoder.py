# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""SAM's two-way mask decoder, frozen, with MaskSAM's 3D adapters and a mask-classification head.

The decoder solves one problem per (stack, query, slice): ``N = B * Q * D`` problems ordered with the
slice index innermost, so that the slice-axis adapters see the D slices of one query consecutively. Its
attention runs through SDPA (:func:`~masksam.backbones.attention.sam_decoder_attention`).
"""

from __future__ import annotations

import torch
from segment_anything.modeling import MaskDecoder
from torch import nn

from masksam.adapters import DepthConvAdapter3D, DepthMLPAdapter3D
from masksam.backbones.attention import sam_decoder_attention
from masksam.backbones.checkpointing import may_reuse_outputs, maybe_checkpoint
from masksam.networks.blocks import ChannelsLastInstanceNorm3d, PatchConvTranspose3d

__all__ = ["DecoderLayerAdapters", "ClassHead", "MaskClassificationDecoder", "MaskHead3D"]


class DecoderLayerAdapters(nn.Module):
    """Adapters of one two-way attention layer (each returns a delta; see :class:`MaskClassificationDecoder`)."""

    def __init__(self, dim: int, hidden_dim: int, num_slices: int, depth_ratio: int = 4) -> None:
        super().__init__()
        self.self_attn = DepthMLPAdapter3D(dim, hidden_dim, num_slices, depth_ratio)
        self.token_to_image = DepthMLPAdapter3D(dim, hidden_dim, num_slices, depth_ratio)
        self.mlp = DepthMLPAdapter3D(dim, hidden_dim, num_slices, depth_ratio)
        self.image_to_token = DepthConvAdapter3D(dim, hidden_dim)


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
    """Frozen SAM ``MaskDecoder`` + 3D adapters + a classifier token, as in MaskSAM.

    Tokens: ``[iou, mask tokens, sparse prompt tokens, classifier]`` where classifier = global token +
    the prompt generator's auxiliary token. Per two-way layer: depth-MLP adapters on the token
    self-attention output, the token-to-image attention output and beside the token MLP (x ``mlp_scale``),
    a depth-conv adapter on the image-token update; a depth-MLP adapter on the final attention.

    Args:
        mask_decoder: a finished ``segment_anything`` ``MaskDecoder`` (weights frozen by the caller).
        num_classes: K, background included; the classifier has K + 1 outputs (last = no-object).
        num_slices: D.
        adapter_dim: hidden width of the adapters (MaskSAM: 64).
        depth_ratio: expansion of the slice MLPs.
        mlp_scale: weight of the adapter beside the token MLP.
        gradient_checkpointing: recompute the activations of each two-way layer and of the heads in the backward pass.
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
        self.gradient_checkpointing = gradient_checkpointing
        self.decoder = mask_decoder
        self.num_slices = num_slices
        self.mlp_scale = mlp_scale
        self.layer_adapters = nn.ModuleList(
            DecoderLayerAdapters(dim, adapter_dim, num_slices, depth_ratio) for _ in mask_decoder.transformer.layers
        )
        self.final_adapter = DepthMLPAdapter3D(dim, adapter_dim, num_slices, depth_ratio)
        self.class_head = ClassHead(dim, num_classes)

    def _add_pe(self, x: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
        """Add a per-slice encoding ``pe (D, L, C)`` to ``x (N, L, C)`` without materialising it per problem."""
        d = self.num_slices
        return (x.reshape(-1, d, *x.shape[1:]) + pe).reshape(x.shape)

    def _layer(
        self,
        layer: nn.Module,
        ad: DecoderLayerAdapters,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
        grid: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One two-way attention layer of SAM with its adapters: ``(queries, keys)`` -> ``(queries, keys)``."""
        d = self.num_slices
        n, _, c = keys.shape
        if layer.skip_first_layer_pe:
            a = sam_decoder_attention(layer.self_attn, queries, queries, queries)
            queries = a + ad.self_attn(a, d)
        else:
            q = queries + query_pe
            a = sam_decoder_attention(layer.self_attn, q, q, queries)
            queries = queries + a + ad.self_attn(a, d)
        queries = layer.norm1(queries)
        a = sam_decoder_attention(layer.cross_attn_token_to_image, queries + query_pe, self._add_pe(keys, key_pe), keys)
        queries = layer.norm2(queries + a + ad.token_to_image(a, d))
        queries = layer.norm3(queries + layer.mlp(queries) + self.mlp_scale * ad.mlp(queries, d))
        a = sam_decoder_attention(
            layer.cross_attn_image_to_token, self._add_pe(keys, key_pe), queries + query_pe, queries
        )
        a = a + ad.image_to_token(a.reshape(n, *grid, c), d).reshape(a.shape)
        return queries, layer.norm4(keys + a)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompts: torch.Tensor,
        aux_tokens: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode ``N = B*Q*D`` problems (slice index innermost).

        Args:
            image_embeddings: ``(N, C, h, w)`` image embedding plus dense prompt of each problem.
            image_pe: ``(D, C, h, w)`` positional encoding of each slice position.
            sparse_prompts: ``(N, P, C)`` prompt tokens (two box corners).
            aux_tokens: ``(N, C)`` auxiliary classifier tokens.

        Returns:
            class logits ``(N, K+1)`` and mask logits ``(N, 4h, 4w)``.
        """
        dec = self.decoder
        t = dec.transformer
        n, c, h, w = image_embeddings.shape
        fixed = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0).expand(n, -1, -1)
        cls = (self.class_head.token + aux_tokens).unsqueeze(1)
        tokens = torch.cat([fixed, sparse_prompts, cls], dim=1)
        keys = image_embeddings.flatten(2).transpose(1, 2)  # (N, hw, C), channels-last
        key_pe = image_pe.flatten(2).transpose(1, 2)  # (D, hw, C)
        queries, query_pe = tokens, tokens
        for layer, ad in zip(t.layers, self.layer_adapters, strict=True):
            queries, keys = maybe_checkpoint(
                self.gradient_checkpointing, self._layer, layer, ad, queries, keys, query_pe, key_pe, (h, w)
            )
        return maybe_checkpoint(self.gradient_checkpointing, self._heads, queries, keys, query_pe, key_pe, (h, w))

    def _heads(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
        grid: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Final token-to-image attention, SAM's up-scaling and hypernetwork mask, and the class head."""
        dec, t = self.decoder, self.decoder.transformer
        n, _, c = keys.shape
        a = sam_decoder_attention(t.final_attn_token_to_image, queries + query_pe, self._add_pe(keys, key_pe), keys)
        queries = t.norm_final_attn(queries + a + self.final_adapter(a, self.num_slices))
        upscaled = dec.output_upscaling(keys.transpose(1, 2).reshape(n, c, *grid))  # (N, C/8, 4h, 4w)
        hyper = dec.output_hypernetworks_mlps[0](queries[:, 1])  # first mask token (multimask off)
        masks = torch.einsum("nc,nchw->nhw", hyper, upscaled)
        return self.class_head.linear(queries[:, -1]), masks


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
                PatchConvTranspose3d(hidden, hidden, (1, 2, 2)),
                ChannelsLastInstanceNorm3d(hidden, affine=True),
                nn.GELU(),
            ]
        layers.append(nn.Conv3d(hidden, num_queries, 3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        """``(B, Q, D, h, w)`` -> channels-last ``(B, Q, D, h*2^n, w*2^n)`` (CPU convolutions are faster so)."""
        masks = masks.contiguous(memory_format=torch.channels_last_3d)
        if not may_reuse_outputs(self.layers, *self.layers):  # (its own hooks see only input and output)
            return maybe_checkpoint(self.gradient_checkpointing, self.layers, masks)
        # Nobody else sees the intermediate tensors: norms and activations in place.
        for layer in self.layers:
            if isinstance(layer, ChannelsLastInstanceNorm3d):
                masks = layer.forward_inplace(masks)
            elif type(layer) is nn.GELU:
                masks = torch.ops.aten.gelu_(masks, approximate=layer.approximate)
            else:
                masks = layer(masks)
        return masks
