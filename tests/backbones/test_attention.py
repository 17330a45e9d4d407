# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import pytest
import torch
from segment_anything.modeling.image_encoder import Attention, Block

from masksam.backbones import AdaptedBlock, sam_attention


def _randomise(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.2)


@pytest.mark.parametrize("grid", [(14, 14), (32, 32), (5, 9)])
def test_sdpa_attention_equals_segment_anything(grid: tuple[int, int]) -> None:
    attn = Attention(dim=96, num_heads=4, use_rel_pos=True, input_size=(32, 32))
    _randomise(attn)
    x = torch.randn(2, *grid, 96)
    with torch.no_grad():
        torch.testing.assert_close(sam_attention(attn, x), attn(x), rtol=1e-4, atol=1e-4)


def test_sdpa_attention_without_rel_pos() -> None:
    attn = Attention(dim=64, num_heads=2, use_rel_pos=False)
    _randomise(attn)
    x = torch.randn(1, 6, 6, 64)
    with torch.no_grad():
        torch.testing.assert_close(sam_attention(attn, x), attn(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("window_size", [0, 14])
def test_adapted_block_without_adapters_equals_vit_b_block(window_size: int) -> None:
    # ViT-B block sizes on a 32x32 token grid (512-pixel input): windowed blocks pad 32 -> 42.
    block = Block(dim=768, num_heads=12, use_rel_pos=True, window_size=window_size, input_size=(32, 32))
    with torch.no_grad():
        block.attn.rel_pos_h.normal_()
        block.attn.rel_pos_w.normal_()
    x = torch.randn(2, 32, 32, 768)
    with torch.no_grad():
        torch.testing.assert_close(AdaptedBlock(block)(x, num_slices=2), block(x), rtol=1e-4, atol=2e-4)
