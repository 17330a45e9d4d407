# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import pytest
import torch
from segment_anything.modeling.image_encoder import Attention, Block
from segment_anything.modeling.transformer import Attention as DecoderAttention
from torch.profiler import ProfilerActivity, profile

from masksam.backbones import AdaptedViTBlock, decomposed_rel_pos_bias, sam_attention
from masksam.backbones.attention import sam_decoder_attention


def _randomise(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.2)


def _attention(dim: int = 96, heads: int = 4, grid: tuple[int, int] = (32, 32)) -> Attention:
    attn = Attention(dim=dim, num_heads=heads, use_rel_pos=True, input_size=grid)
    _randomise(attn)
    return attn


def _aten_ops(fn) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


@pytest.mark.parametrize("grid", [(14, 14), (32, 32), (5, 9)])
def test_sdpa_attention_equals_segment_anything(grid: tuple[int, int]) -> None:
    attn = _attention()
    x = torch.randn(2, *grid, 96)
    with torch.no_grad():
        torch.testing.assert_close(sam_attention(attn, x), attn(x), rtol=1e-4, atol=1e-4)


def test_sdpa_attention_without_rel_pos() -> None:
    attn = Attention(dim=64, num_heads=2, use_rel_pos=False)
    _randomise(attn)
    x = torch.randn(1, 6, 6, 64)
    with torch.no_grad():
        torch.testing.assert_close(sam_attention(attn, x), attn(x), rtol=1e-4, atol=1e-4)


def test_bias_matches_definition() -> None:
    q = torch.randn(2, 3, 4 * 5, 8)
    rel_h, rel_w = torch.randn(7, 8), torch.randn(9, 8)
    bias = decomposed_rel_pos_bias(q, rel_h, rel_w, (4, 5), (4, 5))
    assert bias.shape == (2, 3, 20, 20)
    r_q = q.reshape(2, 3, 4, 5, 8)
    idx_h = torch.arange(4)[:, None] - torch.arange(4)[None, :] + 3
    idx_w = torch.arange(5)[:, None] - torch.arange(5)[None, :] + 4
    expected = (
        torch.einsum("bnhwc,hkc->bnhwk", r_q, rel_h[idx_h])[..., :, None]
        + torch.einsum("bnhwc,wkc->bnhwk", r_q, rel_w[idx_w])[..., None, :]
    )
    torch.testing.assert_close(bias, expected.reshape(2, 3, 20, 20))


def test_a_bias_over_the_bound_takes_the_augmented_form_with_equal_results() -> None:
    """Above ``max_bias_elements`` no (L, L) bias is built: the augmented form gives the same attention."""
    attn = _attention(grid=(6, 6))
    x = torch.randn(3, 6, 6, 96)
    with torch.no_grad():
        small = _aten_ops(lambda: sam_attention(attn, x, max_bias_elements=3 * 4 * 36 * 36))
        large = _aten_ops(lambda: sam_attention(attn, x, max_bias_elements=3 * 4 * 36 * 36 - 1))
        torch.testing.assert_close(sam_attention(attn, x, max_bias_elements=1), attn(x), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(sam_attention(attn, x), attn(x), rtol=1e-4, atol=1e-4)
    assert "aten::one_hot" not in small and "aten::one_hot" in large


@pytest.mark.parametrize("grid", [(14, 14), (5, 9)])
def test_gradients_equal_segment_anything(grid: tuple[int, int]) -> None:
    """Training path (bias folded into queries and keys): output and gradients of input and tables match."""
    ref, ours = _attention(), _attention()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, *grid, 96)
    grads = []
    for module, fn in ((ref, ref), (ours, lambda t: sam_attention(ours, t))):
        xi = x.clone().requires_grad_(True)
        out = fn(xi)
        out.square().mean().backward()
        grads.append((out.detach(), xi.grad, module.rel_pos_h.grad, module.rel_pos_w.grad, module.qkv.weight.grad))
    for a, b in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_fused_cpu_kernel_runs_in_inference_and_training() -> None:
    """No math fallback: the flash CPU kernel runs with the bias and, in training, forward and backward."""
    attn = _attention()
    x = torch.randn(1, 8, 8, 96)
    with torch.no_grad():
        ops = _aten_ops(lambda: sam_attention(attn, x))
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in ops
    assert "aten::_scaled_dot_product_attention_math" not in ops
    xi = x.clone().requires_grad_(True)
    ops = _aten_ops(lambda: sam_attention(attn, xi).sum().backward())
    assert "aten::_scaled_dot_product_flash_attention_for_cpu_backward" in ops
    assert "aten::_scaled_dot_product_attention_math" not in ops


@pytest.mark.parametrize("downsample_rate", [1, 2])
def test_decoder_attention_equals_segment_anything(downsample_rate: int) -> None:
    attn = DecoderAttention(64, num_heads=4, downsample_rate=downsample_rate)
    _randomise(attn)
    q, k, v = torch.randn(3, 7, 64), torch.randn(3, 50, 64), torch.randn(3, 50, 64)
    q.requires_grad_(True)
    expected = attn(q=q, k=k, v=v)
    (g_ref,) = torch.autograd.grad(expected.sum(), q)
    out = sam_decoder_attention(attn, q, k, v)
    (g_ours,) = torch.autograd.grad(out.sum(), q)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("window_size", [0, 14])
def test_adapted_block_without_adapters_equals_vit_b_block(window_size: int) -> None:
    # ViT-B block sizes on a 32x32 token grid (512-pixel input): windowed blocks pad 32 -> 42.
    block = Block(dim=768, num_heads=12, use_rel_pos=True, window_size=window_size, input_size=(32, 32))
    with torch.no_grad():
        block.attn.rel_pos_h.normal_()
        block.attn.rel_pos_w.normal_()
    x = torch.randn(2, 32, 32, 768)
    with torch.no_grad():
        torch.testing.assert_close(AdaptedViTBlock(block)(x, num_slices=2), block(x), rtol=1e-4, atol=2e-4)
