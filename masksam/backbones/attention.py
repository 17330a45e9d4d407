# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""SAM attention through ``torch.nn.functional.scaled_dot_product_attention``.

The frozen ``segment_anything`` attention modules supply the weights: nothing is copied or forked.
SAM's image-encoder attention adds a decomposed relative-position term (MViTv2)
``rel[i, (kh, kw)] = rel_h[i, kh] + rel_w[i, kw]`` to the scores. It reaches SDPA in one of two forms,
each a single SDPA call:

- **additive bias** ``(B, heads, L, L)`` passed as ``attn_mask``, when no gradient has to flow through
  the bias and the bias has at most ``max_bias_elements`` elements (inference with frozen encoders at
  SAM's usual sizes);
- **augmented queries and keys** otherwise: queries ``[scale * q, rel_h, rel_w]``, keys
  ``[k, onehot(kh), onehot(kw)]``, values zero-padded to the same width, so that
  ``q_aug . k_aug = scale * q.k + rel_h[kh] + rel_w[kw]``. No ``(L, L)`` tensor exists, SDPA's fused
  kernels run forward and backward (a bias that needs a gradient sends SDPA to its math kernel), and the
  memory does not grow with the bias. Widths are zero-padded to a multiple of 8, which fused GPU kernels ask for.

The two-way decoder's attention (:func:`sam_decoder_attention`) has no bias and maps directly to SDPA.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, get_rel_pos
from segment_anything.modeling.transformer import Attention as DecoderAttention

__all__ = ["MAX_BIAS_ELEMENTS", "decomposed_rel_pos_bias", "sam_attention", "sam_decoder_attention"]

#: Default largest additive bias (elements) :func:`sam_attention` builds: 2**28, 1 GiB in float32. A ViT-B
#: global block on a 9-slice stack needs 9 * 12 * 1024**2 (113 M) at 512 pixels and 16x that at 1024,
#: where the augmented form takes over.
MAX_BIAS_ELEMENTS = 1 << 28


def _rel_pos_terms(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, q_size: tuple[int, int], k_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``rel_h (B, heads, q_h*q_w, k_h)`` and ``rel_w (B, heads, q_h*q_w, k_w)`` from unscaled ``q``."""
    (q_h, q_w), (k_h, k_w) = q_size, k_size
    r_h = get_rel_pos(q_h, k_h, rel_pos_h).to(q.dtype)
    r_w = get_rel_pos(q_w, k_w, rel_pos_w).to(q.dtype)
    b, heads, _, dim = q.shape
    r_q = q.reshape(b, heads, q_h, q_w, dim)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, r_h).reshape(b, heads, q_h * q_w, k_h)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, r_w).reshape(b, heads, q_h * q_w, k_w)
    return rel_h, rel_w


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
    rel_h, rel_w = _rel_pos_terms(q, rel_pos_h, rel_pos_w, q_size, k_size)
    return (rel_h[..., :, None] + rel_w[..., None, :]).flatten(-2)


def _augmented_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_h: torch.Tensor,
    rel_w: torch.Tensor,
    k_size: tuple[int, int],
    scale: float,
) -> torch.Tensor:
    """SDPA of ``scale * q.k + rel_h[kh] + rel_w[kw]`` with the bias folded into the dot product."""
    k_h, k_w = k_size
    b, heads, keys, dim = k.shape
    index = torch.arange(keys, device=k.device)
    onehot = torch.cat([F.one_hot(index // k_w, k_h), F.one_hot(index % k_w, k_w)], dim=-1).to(k.dtype)
    pad = -(dim + k_h + k_w) % 8
    q_aug = F.pad(torch.cat([q * scale, rel_h, rel_w], dim=-1), (0, pad))
    k_aug = F.pad(torch.cat([k, onehot.expand(b, heads, keys, k_h + k_w)], dim=-1), (0, pad))
    v_aug = F.pad(v, (0, k_h + k_w + pad))
    return F.scaled_dot_product_attention(q_aug, k_aug, v_aug, scale=1.0)[..., :dim]


def sam_attention(
    attn: Attention,
    x: torch.Tensor,
    qkv_update: Callable[[torch.Tensor], torch.Tensor] | None = None,
    max_bias_elements: int = MAX_BIAS_ELEMENTS,
) -> torch.Tensor:
    """SAM multi-head self-attention of ``attn``'s weights, computed with SDPA.

    The relative-position term goes in as an additive bias when no gradient must flow through it (``q``
    and the tables need none, or grad mode is off) and it has at most ``max_bias_elements`` elements;
    otherwise folded into augmented queries and keys (see the module docstring). Both give ``attn(x)``
    within floating-point tolerance.

    Args:
        attn: a ``segment_anything`` image-encoder ``Attention`` (qkv, proj, optional rel-pos tables).
        x: channels-last tokens ``(B, H, W, C)`` (one window or the whole grid).
        qkv_update: optional low-rank update (FacT, LoRA) mapping ``x`` to a ``(B, H, W, 3C)`` delta of the
            frozen qkv projection, laid out ``[q | k | v]``.
        max_bias_elements: memory bound of the additive-bias form.

    Returns:
        ``(B, H, W, C)``, equal to ``attn(x)`` (without update) within floating-point tolerance.
    """
    b, h, w, c = x.shape
    qkv = attn.qkv(x)
    if qkv_update is not None:
        qkv = qkv + qkv_update(x)
    q, k, v = qkv.reshape(b, h * w, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    if not attn.use_rel_pos:
        out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
    else:
        rel_h, rel_w = _rel_pos_terms(q, attn.rel_pos_h, attn.rel_pos_w, (h, w), (h, w))
        needs_grad = torch.is_grad_enabled() and (rel_h.requires_grad or rel_w.requires_grad)
        if needs_grad or b * attn.num_heads * (h * w) ** 2 > max_bias_elements:
            out = _augmented_sdpa(q, k, v, rel_h, rel_w, (h, w), attn.scale)
        else:
            bias = (rel_h[..., :, None] + rel_w[..., None, :]).flatten(-2)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=attn.scale)
    return attn.proj(out.transpose(1, 2).reshape(b, h, w, c))


def sam_decoder_attention(attn: DecoderAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``segment_anything``'s two-way-transformer ``Attention`` (``attn(q=q, k=k, v=v)``) through SDPA.

    Args:
        attn: a ``segment_anything.modeling.transformer.Attention`` (q/k/v/out projections).
        q: ``(B, N_q, C)`` queries; k, v: ``(B, N_k, C)`` keys and values (channels-last tokens).

    Returns:
        ``(B, N_q, C)``, equal to ``attn(q=q, k=k, v=v)`` within floating-point tolerance.
    """
    heads = attn.num_heads

    def split(t: torch.Tensor) -> torch.Tensor:  # (B, N, C') -> (B, heads, N, C'/heads)
        return t.unflatten(-1, (heads, -1)).transpose(1, 2)

    out = F.scaled_dot_product_attention(split(attn.q_proj(q)), split(attn.k_proj(k)), split(attn.v_proj(v)))
    return attn.out_proj(out.transpose(1, 2).flatten(2))
