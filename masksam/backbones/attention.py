# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""SAM attention through ``torch.nn.functional.scaled_dot_product_attention``.

SAM's decomposed relative-position term is passed to SDPA as an additive attention bias, so the fused
kernels (flash/memory-efficient on GPU, the fused CPU kernel) run instead of the explicit
softmax(QK^T) of ``segment_anything``. The frozen ``segment_anything`` ``Attention`` module supplies
the weights: nothing is copied or forked.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, get_rel_pos

__all__ = ["decomposed_rel_pos_bias", "sam_attention"]


def decomposed_rel_pos_bias(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, q_size: tuple[int, int], k_size: tuple[int, int]
) -> torch.Tensor:
    """Additive attention bias of SAM's decomposed relative positions (MViTv2).

    Args:
        q: queries ``(B, heads, q_h*q_w, head_dim)`` (unscaled).
        rel_pos_h, rel_pos_w: tables ``(L, head_dim)``; resized linearly when L differs from ``2*size-1``.
        q_size, k_size: query and key grids.

    Returns:
        bias ``(B, heads, q_h*q_w, k_h*k_w)`` in ``q``'s dtype.
    """
    (q_h, q_w), (k_h, k_w) = q_size, k_size
    r_h = get_rel_pos(q_h, k_h, rel_pos_h).to(q.dtype)
    r_w = get_rel_pos(q_w, k_w, rel_pos_w).to(q.dtype)
    b, heads, _, dim = q.shape
    r_q = q.reshape(b, heads, q_h, q_w, dim)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, r_h)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, r_w)
    return (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, heads, q_h * q_w, k_h * k_w)


def sam_attention(
    attn: Attention, x: torch.Tensor, qkv_update: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> torch.Tensor:
    """SAM multi-head self-attention of ``attn``'s weights, computed with SDPA.

    Args:
        attn: a ``segment_anything`` image-encoder ``Attention`` (qkv, proj, optional rel-pos tables).
        x: channels-last tokens ``(B, H, W, C)`` (one window or the whole grid).
        qkv_update: optional low-rank update (FacT, LoRA) mapping ``x`` to a ``(B, H, W, 3C)`` delta that
            is added to the frozen qkv projection.

    Returns:
        ``(B, H, W, C)``, equal to ``attn(x)`` (without update) within floating-point tolerance.
    """
    b, h, w, c = x.shape
    qkv = attn.qkv(x)
    if qkv_update is not None:
        qkv = qkv + qkv_update(x)
    q, k, v = qkv.reshape(b, h * w, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    bias = decomposed_rel_pos_bias(q, attn.rel_pos_h, attn.rel_pos_w, (h, w), (h, w)) if attn.use_rel_pos else None
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=attn.scale)
    return attn.proj(out.transpose(1, 2).reshape(b, h, w, c))
