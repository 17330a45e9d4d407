# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""SAM's two-way mask decoder with named adapter slots: the decoder every method of the package builds on.

:class:`AdaptedTwoWayTransformer` runs a finished ``segment_anything`` ``TwoWayTransformer`` (frozen or
fine-tuned; its attention through SDPA) with the adapters of :class:`~masksam.adapters.DecoderAdapters` in each two-way
layer and an optional adapter on the final token-to-image attention. With every slot empty it computes
what the wrapped transformer computes. :func:`hypernetwork_masks` is SAM's mask product of output
tokens and up-scaled image tokens. Method heads (classification, 3D refinement...) live in the methods'
network modules.

Slice-aware adapters need the decoding problems of one stack consecutive: ``N = G * D`` problems with
``n = g * D + d`` (``g`` over stacks, queries or prompts).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from segment_anything.modeling import TwoWayTransformer
from torch import nn

from masksam.adapters.block import DecoderAdapters
from masksam.adapters.hyper_prompt import PromptConditionedAdapter
from masksam.backbones.attention import sam_decoder_attention
from masksam.backbones.checkpointing import maybe_checkpoint

__all__ = ["AdaptedTwoWayTransformer", "hypernetwork_masks"]


def _delta(adapter: nn.Module, x: torch.Tensor, num_slices: int, prompt: torch.Tensor | None) -> torch.Tensor:
    """A slot adapter's delta; prompt-conditioned adapters also receive the problems' prompt embeddings."""
    if isinstance(adapter, PromptConditionedAdapter):
        if prompt is None:
            raise ValueError(
                f"{type(adapter).__name__} is conditioned on the prompt: pass prompt_embedding (N, C) to the decoder"
            )
        return adapter(x, num_slices, prompt)
    return adapter(x, num_slices)


def _plus(
    x: torch.Tensor, adapter: nn.Module | None, num_slices: int, prompt: torch.Tensor | None, scale: float = 1.0
) -> torch.Tensor:
    """``x + scale * adapter(x)`` for a filled slot, else ``x``."""
    return x if adapter is None else x + scale * _delta(adapter, x, num_slices, prompt)


class AdaptedTwoWayTransformer(nn.Module):
    """SAM's ``TwoWayTransformer`` with :class:`DecoderAdapters` per layer and a final-attention adapter.

    Args:
        transformer: a finished ``segment_anything`` ``TwoWayTransformer`` (e.g. ``sam.mask_decoder.transformer``).
        layer_adapters: one :class:`DecoderAdapters` (or None) per two-way layer; default none.
        final_adapter: optional adapter on the final token-to-image attention output ``(N, T, C)``.
        gradient_checkpointing: recompute each layer and the final attention in the backward pass.
    """

    def __init__(
        self,
        transformer: TwoWayTransformer,
        layer_adapters: Sequence[DecoderAdapters | None] | None = None,
        final_adapter: nn.Module | None = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        depth = len(transformer.layers)
        if layer_adapters is None:
            layer_adapters = [None] * depth
        if len(layer_adapters) != depth:
            raise ValueError(f"got {len(layer_adapters)} layer adapters for a two-way transformer of {depth} layers")
        self.transformer = transformer
        self.layer_adapters = nn.ModuleList(a if a is not None else DecoderAdapters() for a in layer_adapters)
        self.final_adapter = final_adapter
        self.gradient_checkpointing = gradient_checkpointing

    @staticmethod
    def _add_pe(keys: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
        """``keys (N, L, C)`` plus ``pe (P, L, C)``, problem ``n`` taking ``pe[n % P]`` (never repeated per problem)."""
        return (keys.reshape(-1, pe.shape[0], *keys.shape[1:]) + pe).reshape(keys.shape)

    def _layer(
        self,
        layer: nn.Module,
        ad: DecoderAdapters,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
        grid: tuple[int, int],
        num_slices: int,
        prompt: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One two-way attention layer with its adapters: ``(queries, keys)`` -> ``(queries, keys)``."""
        if layer.skip_first_layer_pe:
            a = sam_decoder_attention(layer.self_attn, queries, queries, queries)
            queries = _plus(a, ad.self_attn, num_slices, prompt)
        else:
            q = queries + query_pe
            a = sam_decoder_attention(layer.self_attn, q, q, queries)
            queries = queries + _plus(a, ad.self_attn, num_slices, prompt)
        queries = layer.norm1(queries)
        a = sam_decoder_attention(layer.cross_attn_token_to_image, queries + query_pe, self._add_pe(keys, key_pe), keys)
        queries = layer.norm2(queries + _plus(a, ad.token_to_image, num_slices, prompt))
        mlp = layer.mlp(queries)
        if ad.mlp is not None:
            mlp = mlp + ad.mlp_scale * _delta(ad.mlp, queries, num_slices, prompt)
        queries = layer.norm3(queries + mlp)
        a = sam_decoder_attention(
            layer.cross_attn_image_to_token, self._add_pe(keys, key_pe), queries + query_pe, queries
        )
        if ad.image_to_token is not None:
            n, _, c = a.shape
            a = a + _delta(ad.image_to_token, a.reshape(n, *grid, c), num_slices, prompt).reshape(a.shape)
        return queries, layer.norm4(keys + a)

    def forward(
        self,
        image_embedding: torch.Tensor,
        image_pe: torch.Tensor,
        point_embedding: torch.Tensor,
        num_slices: int = 1,
        prompt_embedding: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the two-way transformer on ``N`` decoding problems.

        Args:
            image_embedding: ``(N, C, h, w)`` image embedding (dense prompt included) of each problem.
            image_pe: ``(P, C, h, w)`` positional encoding, ``N`` a multiple of ``P``; problem ``n`` takes
                ``image_pe[n % P]`` (SAM: ``P = 1``; a per-slice encoding: ``P = D``).
            point_embedding: ``(N, T, C)`` tokens (output tokens and sparse prompts).
            num_slices: D, passed to the adapters.
            prompt_embedding: ``(N, C)`` one embedding of each problem's prompt, passed to prompt-conditioned
                adapters (:class:`~masksam.adapters.PromptConditionedAdapter`); required when there are any.

        Returns:
            ``queries (N, T, C)`` and ``keys (N, h*w, C)``, channels-last.
        """
        n, c, h, w = image_embedding.shape
        if point_embedding.shape[0] != n or n % image_pe.shape[0]:
            raise ValueError(
                f"{n} image embeddings, {point_embedding.shape[0]} token sets and {image_pe.shape[0]} positional "
                "encodings do not pair up (tokens: one set per embedding; encodings: a divisor of their number)"
            )
        keys = image_embedding.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = point_embedding
        for layer, ad in zip(self.transformer.layers, self.layer_adapters, strict=True):
            queries, keys = maybe_checkpoint(
                self.gradient_checkpointing,
                self._layer,
                layer,
                ad,
                queries,
                keys,
                point_embedding,
                key_pe,
                (h, w),
                num_slices,
                prompt_embedding,
            )
        queries = maybe_checkpoint(
            self.gradient_checkpointing,
            self._final,
            queries,
            keys,
            point_embedding,
            key_pe,
            num_slices,
            prompt_embedding,
        )
        return queries, keys

    def _final(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
        num_slices: int,
        prompt: torch.Tensor | None,
    ) -> torch.Tensor:
        """The final token-to-image attention with its adapter, and its norm."""
        t = self.transformer
        a = sam_decoder_attention(t.final_attn_token_to_image, queries + query_pe, self._add_pe(keys, key_pe), keys)
        return t.norm_final_attn(queries + _plus(a, self.final_adapter, num_slices, prompt))


def hypernetwork_masks(
    upscaling: Callable[[torch.Tensor], torch.Tensor],
    hypernetworks: Sequence[nn.Module],
    token_outputs: torch.Tensor,
    keys: torch.Tensor,
    grid: tuple[int, int],
) -> torch.Tensor:
    """SAM's mask product: up-scaled image tokens dotted with the hypernetwork outputs of mask tokens.

    Args:
        upscaling: SAM's ``output_upscaling`` (or a method's own module or function), ``(N, C, h, w) -> (N, C', H', W')``.
        hypernetworks: one MLP per mask token, mapping ``(N, C)`` to ``(N, C')``.
        token_outputs: ``(N, M, C)`` transformer outputs of the M mask tokens, in the MLPs' order.
        keys: ``(N, h*w, C)`` transformer outputs of the image tokens.
        grid: ``(h, w)``.

    Returns:
        ``(N, M, H', W')`` mask logits at the up-scaled resolution (SAM: ``4h x 4w``).
    """
    if token_outputs.shape[1] != len(hypernetworks):
        raise ValueError(f"{token_outputs.shape[1]} mask tokens for {len(hypernetworks)} hypernetwork MLPs")
    n, _, c = keys.shape
    upscaled = upscaling(keys.transpose(1, 2).reshape(n, c, *grid))
    hyper = torch.stack([mlp(token_outputs[:, i]) for i, mlp in enumerate(hypernetworks)], dim=1)
    return torch.einsum("nmc,nchw->nmhw", hyper, upscaled)
