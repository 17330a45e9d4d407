# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import torch
from segment_anything.modeling import MaskDecoder, TwoWayTransformer

from masksam.networks.mask_decoder import MaskClassificationDecoder, MaskHead3D


def _sam_decoder(dim: int = 32) -> MaskDecoder:
    transformer = TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=64, num_heads=4)
    return MaskDecoder(transformer_dim=dim, transformer=transformer, num_multimask_outputs=3).eval()


def test_untouched_adapters_reproduce_sams_two_way_decoder() -> None:
    """Zero-initialised adapters + SDPA attention = segment_anything's TwoWayTransformer and mask product."""
    torch.manual_seed(0)
    dim, d, h, w, q, b = 32, 3, 4, 5, 2, 1
    dec = MaskClassificationDecoder(_sam_decoder(dim), num_classes=4, num_slices=d, adapter_dim=8).eval()
    n = b * q * d
    emb = torch.randn(n, dim, h, w)
    pe = torch.randn(d, dim, h, w)
    prompts = torch.randn(n, 2, dim)
    aux = torch.randn(n, dim)
    with torch.no_grad():
        logits, masks = dec(emb, pe, prompts, aux)

        sam = dec.decoder
        fixed = torch.cat([sam.iou_token.weight, sam.mask_tokens.weight], dim=0).expand(n, -1, -1)
        tokens = torch.cat([fixed, prompts, (dec.class_head.token + aux).unsqueeze(1)], dim=1)
        pe_n = pe.repeat(b * q, 1, 1, 1)  # problem i has slice i % d
        queries, keys = sam.transformer(emb, pe_n, tokens)
        upscaled = sam.output_upscaling(keys.transpose(1, 2).reshape(n, dim, h, w))
        hyper = sam.output_hypernetworks_mlps[0](queries[:, 1])
        expected_masks = (hyper[:, None, :] @ upscaled.flatten(2)).reshape(n, 4 * h, 4 * w)
    torch.testing.assert_close(masks, expected_masks, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits, dec.class_head.linear(queries[:, -1]), rtol=1e-4, atol=1e-5)


def test_decoder_adapters_mix_slices_of_one_query_only() -> None:
    """With non-zero adapters, perturbing slice t of query j changes its other slices, never another query's."""
    torch.manual_seed(0)
    dim, d, h, w, q = 32, 3, 4, 4, 2
    dec = MaskClassificationDecoder(_sam_decoder(dim), num_classes=2, num_slices=d, adapter_dim=8).eval()
    with torch.no_grad():
        for p in dec.layer_adapters.parameters():
            p.normal_(0, 0.2)
    n = q * d
    emb, pe = torch.randn(n, dim, h, w), torch.randn(d, dim, h, w)
    prompts, aux = torch.randn(n, 2, dim), torch.randn(n, dim)
    with torch.no_grad():
        _, base = dec(emb, pe, prompts, aux)
        emb2 = emb.clone()
        emb2[1] += 1.0  # query 0, slice 1
        _, moved = dec(emb2, pe, prompts, aux)
    change = (moved - base).abs().flatten(1).amax(1)
    assert (change[[0, 2]] > 1e-4).all(), "the other slices of query 0 change"
    assert (change[d:] == 0).all(), "query 1 is untouched"


def test_mask_head_without_autograd_works_in_place_with_equal_results() -> None:
    torch.manual_seed(0)
    head = MaskHead3D(num_queries=3, num_up=2, hidden=4)
    for module in head.layers:
        if isinstance(module, torch.nn.InstanceNorm3d):
            torch.nn.init.normal_(module.weight)
            torch.nn.init.normal_(module.bias)
    masks = torch.randn(2, 3, 4, 5, 5)
    expected = head(masks).detach()
    assert expected.shape == (2, 3, 4, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(head(masks), expected, rtol=1e-5, atol=1e-5)
    kept = []
    head.layers[2].register_forward_hook(lambda _m, _i, out: kept.append((out, out.clone())))
    with torch.no_grad():
        torch.testing.assert_close(head(masks), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(*kept[0]), "a hooked norm's output is not written into"
