# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""SAM attention through ``torch.nn.functional.scaled_dot_product_attention``.

The frozen ``segment_anything`` attention modules supply the weights: nothing is copied or forked.
SAM's image-encoder attention adds a decomposed relative-position term (MViTv2)
``rel[i, (kh, kw)] = rel_h[i, kh] + rel_w[i, kw]`` to the scores. It reaches SDPA in one of two forms:

- **additive bias** (no gradient needed through it: inference, frozen encoders). The bias is built
  contiguous, in chunks of at most :data:`BIAS_CHUNK_ELEMENTS` elements (whole images, else groups of
  heads, else query rows of one head), and passed as ``attn_mask``: on CPU the fused
  ``_scaled_dot_product_flash_attention_for_cpu`` runs (on CUDA SDPA may pick its memory-efficient
  kernel, which takes a bias; not measured). The chunks share one buffer and bound the bias memory (a
  ViT-B global block at 1024 pixels would otherwise allocate a 805 MB ``(12, 4096, 4096)`` bias per
  image); small chunks are also faster, as the kernel reads each one soon after it is written. Heads and
  queries are independent, so the result does not depend on the chunking beyond floating-point rounding.
- **augmented queries and keys** (the bias needs a gradient: training with adapters upstream of the
  block). PyTorch's fused CPU kernel gives no gradient for ``attn_mask`` and SDPA falls back to the math
  kernel, which materialises the ``(L, S)`` scores and probabilities of every head for the backward
  pass. Instead the bias is folded into the dot product: queries ``[scale * q, rel_h, rel_w]``, keys
  ``[k, onehot(kh), onehot(kw)]`` (values zero-padded to the same width), so the fused kernel runs
  forward and backward and no ``(L, S)`` tensor exists.

The two-way decoder's attention (:func:`sam_decoder_attention`) has no bias and maps directly to SDPA.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, get_rel_pos
from segment_anything.modeling.transformer import Attention as DecoderAttention

__all__ = ["BIAS_CHUNK_ELEMENTS", "decomposed_rel_pos_bias", "sam_attention", "sam_decoder_attention"]

#: Largest additive bias (in elements) built at once by :func:`sam_attention` (16 MiB in float32: at
#: 1024 px a ViT-B global block then runs 1024 query rows of one head per call). On 2 CPU cores the
#: ViT-B encoder at 1024 px took 3.83 and 4.10 s with it, 4.03 and 4.27 s with 2**25 (two runs each of
#: ``benchmarks/attention.py --sizes 1024 --no-memory --bias-chunk-elements N``).
BIAS_CHUNK_ELEMENTS = 1 << 22


def _rel_pos_terms(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, q_size: tuple[int, int], k_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``rel_h (B, heads, q_h*q_w, k_h)`` and ``rel_w (B, heads, q_h*q_w, k_w)``, contiguous, from unscaled ``q``."""
    (q_h, q_w), (k_h, k_w) = q_size, k_size
    r_h = get_rel_pos(q_h, k_h, rel_pos_h).to(q.dtype)
    r_w = get_rel_pos(q_w, k_w, rel_pos_w).to(q.dtype)
    b, heads, _, dim = q.shape
    r_q = q.reshape(b, heads, q_h, q_w, dim)
    # einsum returns permuted views; contiguous copies of these small tensors keep the bias writes linear.
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, r_h).reshape(b, heads, q_h * q_w, k_h).contiguous()
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, r_w).reshape(b, heads, q_h * q_w, k_w).contiguous()
    return rel_h, rel_w


def _bias(rel_h: torch.Tensor, rel_w: torch.Tensor, buffer: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, heads, L, k_h)`` + ``(B, heads, L, k_w)`` -> contiguous ``(B, heads, L, k_h*k_w)``.

    With ``buffer`` (a flat tensor of at least that many elements; no autograd) the sum is written into it.
    """
    if buffer is None:
        # With contiguous inputs the broadcast sum is laid out contiguously, so the flattening is a view.
        return (rel_h[..., :, None] + rel_w[..., None, :]).flatten(-2)
    shape = (*rel_h.shape, rel_w.shape[-1])
    out = buffer[: math.prod(shape)].view(shape)
    torch.add(rel_h[..., :, None], rel_w[..., None, :], out=out)
    return out.flatten(-2)


def decomposed_rel_pos_bias(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, q_size: tuple[int, int], k_size: tuple[int, int]
) -> torch.Tensor:
    """Additive attention bias of SAM's decomposed relative positions (MViTv2).

    Args:
        q: queries ``(B, heads, q_h*q_w, head_dim)`` (unscaled).
        rel_pos_h, rel_pos_w: tables ``(L, head_dim)``; resized linearly when L differs from ``2*size-1``.
        q_size, k_size: query and key grids.

    Returns:
        contiguous bias ``(B, heads, q_h*q_w, k_h*k_w)`` in ``q``'s dtype.
    """
    return _bias(*_rel_pos_terms(q, rel_pos_h, rel_pos_w, q_size, k_size))


def _balanced(total: int, most: int) -> int:
    """Chunk length <= ``most`` (at least 1) splitting ``total`` into equal chunks (no small remainder)."""
    most = max(1, most)
    chunks = -(-total // most)
    return -(-total // chunks)


def _chunked_biased_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor, scale: float
) -> torch.Tensor:
    """SDPA with the bias ``rel_h + rel_w`` built chunk by chunk: whole images, else heads, else query rows.

    No autograd through the bias. The chunks share one buffer of at most :data:`BIAS_CHUNK_ELEMENTS`.
    """
    b, heads, length, _ = q.shape
    keys = k.shape[2]
    per_head = length * keys
    if b * heads * per_head <= BIAS_CHUNK_ELEMENTS:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=_bias(rel_h, rel_w), scale=scale)
    # Whole images per chunk if one image fits, else groups of heads if one head fits, else query rows.
    step_b = _balanced(b, BIAS_CHUNK_ELEMENTS // (heads * per_head))
    step_h = heads if heads * per_head <= BIAS_CHUNK_ELEMENTS else _balanced(heads, BIAS_CHUNK_ELEMENTS // per_head)
    rows = length if per_head <= BIAS_CHUNK_ELEMENTS else _balanced(length, BIAS_CHUNK_ELEMENTS // keys)
    chunks = [
        (slice(i, i + step_b), slice(h, h + step_h), slice(r, r + rows))
        for i in range(0, b, step_b)
        for h in range(0, heads, step_h)
        for r in range(0, length, rows)
    ]
    size = step_b * step_h * rows * keys
    # Laid out (B, L, heads, dim): the caller's merge of the heads is then a view, not a copy.
    out = q.new_empty((b, length, heads, v.shape[-1])).transpose(1, 2)
    buffer = q.new_empty(size)
    for sb, sh, sr in chunks:
        bias = _bias(rel_h[sb, sh, sr], rel_w[sb, sh, sr], buffer)
        out[sb, sh, sr] = F.scaled_dot_product_attention(
            q[sb, sh, sr], k[sb, sh], v[sb, sh], attn_mask=bias, scale=scale
        )
    return out


def _augmented_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_h: torch.Tensor,
    rel_w: torch.Tensor,
    k_size: tuple[int, int],
    scale: float,
) -> torch.Tensor:
    """SDPA of ``scale * q.k + rel_h[kh] + rel_w[kw]`` with the bias folded into the dot product.

    ``[scale*q, rel_h, rel_w] . [k, onehot(kh), onehot(kw)] = scale * q.k + rel_h[kh] + rel_w[kw]``;
    the values are zero-padded to the same width (SDPA's fused kernels need equal widths) and the padding
    is sliced off the output.
    """
    k_h, k_w = k_size
    b, heads, keys, dim = k.shape
    index = torch.arange(keys, device=k.device)
    onehot = torch.cat([F.one_hot(index // k_w, k_h), F.one_hot(index % k_w, k_w)], dim=-1).to(k.dtype)
    q_aug = torch.cat([q * scale, rel_h, rel_w], dim=-1)
    k_aug = torch.cat([k, onehot.expand(b, heads, keys, k_h + k_w)], dim=-1)
    v_aug = F.pad(v, (0, k_h + k_w))
    return F.scaled_dot_product_attention(q_aug, k_aug, v_aug, scale=1.0)[..., :dim]


def sam_attention(
    attn: Attention, x: torch.Tensor, qkv_update: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> torch.Tensor:
    """SAM multi-head self-attention of ``attn``'s weights, computed with SDPA.

    The relative-position term goes in as a chunked additive bias, or, when a gradient must flow
    through it (``q`` or the tables require grad under grad mode), folded into augmented queries and
    keys (see the module docstring). Both give ``attn(x)`` within floating-point tolerance.

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
    if not attn.use_rel_pos:
        out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
    else:
        rel_h, rel_w = _rel_pos_terms(q, attn.rel_pos_h, attn.rel_pos_w, (h, w), (h, w))
        if torch.is_grad_enabled() and (rel_h.requires_grad or rel_w.requires_grad):
            out = _augmented_sdpa(q, k, v, rel_h, rel_w, (h, w), attn.scale)
        else:
            out = _chunked_biased_sdpa(q, k, v, rel_h, rel_w, attn.scale)
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
