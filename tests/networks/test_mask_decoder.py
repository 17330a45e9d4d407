# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""The shared adapted two-way decoder: SAM's own decoder when its slots are empty; adapters where they are filled."""

from __future__ import annotations

import pytest
import torch
from segment_anything.modeling import MaskDecoder, TwoWayTransformer
from torch import nn

from masksam.adapters import BottleneckAdapter, DecoderAdapters, DepthConvAdapter3D, DepthMLPAdapter3D
from masksam.networks import AdaptedTwoWayTransformer, hypernetwork_masks


def sam_decoder(dim: int = 32) -> MaskDecoder:
    transformer = TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=64, num_heads=4)
    return MaskDecoder(transformer_dim=dim, transformer=transformer, num_multimask_outputs=3).eval()


def randomise(module: nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.2)


def test_empty_slots_reproduce_sams_mask_decoder() -> None:
    """No adapters: SAM's ``MaskDecoder.predict_masks`` (transformer, up-scaling, hypernetwork masks)."""
    torch.manual_seed(0)
    dec = sam_decoder()
    ours = AdaptedTwoWayTransformer(dec.transformer).eval()
    n, h, w = 3, 4, 5  # one image, three prompts (SAM repeats the image embedding per prompt)
    emb, pe = torch.randn(1, 32, h, w), torch.randn(1, 32, h, w)
    sparse, dense = torch.randn(n, 2, 32), torch.randn(n, 32, h, w)
    tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0).expand(n, -1, -1)
    tokens = torch.cat([tokens, sparse], dim=1)
    with torch.no_grad():
        queries, keys = ours(emb + dense, pe, tokens)
        masks = hypernetwork_masks(
            dec.output_upscaling, dec.output_hypernetworks_mlps, queries[:, 1 : 1 + dec.num_mask_tokens], keys, (h, w)
        )
        expected, _ = dec.predict_masks(emb, pe, sparse, dense)
    torch.testing.assert_close(masks, expected, rtol=1e-4, atol=1e-5)


def test_positional_encoding_per_group_position() -> None:
    """``image_pe (P, C, h, w)``: problem n takes pe[n % P], as if each problem had its own copy."""
    torch.manual_seed(0)
    dec = sam_decoder()
    ours = AdaptedTwoWayTransformer(dec.transformer).eval()
    emb, pe, tokens = torch.randn(6, 32, 3, 3), torch.randn(3, 32, 3, 3), torch.randn(6, 4, 32)
    with torch.no_grad():
        grouped = ours(emb, pe, tokens)
        for n in range(6):
            single = ours(emb[n : n + 1], pe[n % 3 : n % 3 + 1], tokens[n : n + 1])
            torch.testing.assert_close(grouped[0][n], single[0][0], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(grouped[1][n], single[1][0], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="do not pair up"):
        ours(emb, torch.randn(4, 32, 3, 3), tokens)


def slice_adapters(dim: int, d: int) -> tuple[list[DecoderAdapters], nn.Module]:
    def mlp() -> DepthMLPAdapter3D:
        return DepthMLPAdapter3D(dim, 8, d)

    layers = [DecoderAdapters(mlp(), mlp(), mlp(), DepthConvAdapter3D(dim, 8)) for _ in range(2)]
    return layers, mlp()


def test_slice_adapters_mix_the_slices_of_one_group_only() -> None:
    """Perturbing slice t of group 0 changes its other slices' outputs, never group 1's."""
    torch.manual_seed(0)
    dim, d = 32, 3
    layers, final = slice_adapters(dim, d)
    ours = AdaptedTwoWayTransformer(sam_decoder(dim).transformer, layers, final).eval()
    randomise(nn.ModuleList([*layers, final]))
    emb, pe, tokens = torch.randn(2 * d, dim, 4, 4), torch.randn(d, dim, 4, 4), torch.randn(2 * d, 5, dim)
    moved = emb.clone()
    moved[1] += 1.0
    with torch.no_grad():
        base, after = ours(emb, pe, tokens, d), ours(moved, pe, tokens, d)
    change = (after[0] - base[0]).abs().flatten(1).amax(1)
    assert (change[[0, 2]] > 1e-4).all(), "the other slices of group 0 change"
    assert (change[d:] == 0).all(), "group 1 is untouched"


@pytest.mark.parametrize("slot", ["self_attn", "token_to_image", "mlp", "image_to_token", "final"])
def test_each_slot_is_used_and_starts_as_the_identity(slot: str) -> None:
    torch.manual_seed(0)
    dec = sam_decoder()
    plain = AdaptedTwoWayTransformer(dec.transformer).eval()
    adapter = BottleneckAdapter(32, 8)
    if slot == "final":
        ours = AdaptedTwoWayTransformer(dec.transformer, final_adapter=adapter).eval()
    else:
        ours = AdaptedTwoWayTransformer(dec.transformer, [DecoderAdapters(**{slot: adapter}), None]).eval()
    emb, pe, tokens = torch.randn(2, 32, 3, 3), torch.randn(1, 32, 3, 3), torch.randn(2, 4, 32)
    with torch.no_grad():
        expected = plain(emb, pe, tokens)
        torch.testing.assert_close(ours(emb, pe, tokens), expected)
        randomise(adapter)
        changed = ours(emb, pe, tokens)
    assert not torch.allclose(changed[0], expected[0]), f"the {slot} adapter is not applied"


def test_gradient_checkpointing_gives_equal_gradients() -> None:
    torch.manual_seed(0)
    layers, final = slice_adapters(32, 2)
    ours = AdaptedTwoWayTransformer(sam_decoder().transformer, layers, final)
    randomise(nn.ModuleList([*layers, final]))
    emb, pe, tokens = torch.randn(4, 32, 3, 3), torch.randn(2, 32, 3, 3), torch.randn(4, 4, 32)
    grads = []
    for enabled in (False, True):
        ours.gradient_checkpointing = enabled
        ours.zero_grad()
        sum(t.square().mean() for t in ours(emb, pe, tokens, 2)).backward()
        grads.append([p.grad.clone() for p in ours.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_wrong_layer_count_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="got 3 layer adapters for a two-way transformer of 2 layers"):
        AdaptedTwoWayTransformer(sam_decoder().transformer, [None] * 3)
