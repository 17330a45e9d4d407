# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from masksam.networks import PromptGenerator3D
from masksam.networks.prompt_generator import _pool_in_plane


def vit_features(num: int, batch_slices: int, side: int, channels: list[int]) -> list[torch.Tensor]:
    """Encoder features as the ViT hands them over: channels-first views of channels-last tokens."""
    return [torch.randn(batch_slices, side, side, c).permute(0, 3, 1, 2) for c in channels[:num]]


@pytest.mark.parametrize("side", [4, 3, 12])
def test_in_plane_pooling_equals_adaptive_pooling(side: int) -> None:
    """The block-mean path (channels-last input, side dividing H and W) against adaptive pooling."""
    x = torch.randn(2, 5, 3, 12, 12).contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(_pool_in_plane(x, side), F.adaptive_avg_pool3d(x, (3, side, side)))


def test_generator_runs_channels_last_with_and_without_autograd_alike() -> None:
    """Without autograd the norms and up-sampling take their in-place paths; the outputs must not change."""
    torch.manual_seed(0)
    gen = PromptGenerator3D([12, 12, 12, 12, 10], [8, 8, 8, 8, 8], num_queries=3, token_dim=16, widths=[8, 6, 6, 4])
    feats = vit_features(5, 2 * 3, 2, [12, 12, 12, 12, 10])
    with torch.no_grad():
        fast = gen(feats, num_slices=3)
    slow = gen(feats, num_slices=3)
    assert fast["aux_masks"].shape == (2, 3, 3, 16, 16)
    for key, value in slow.items():
        torch.testing.assert_close(fast[key], value.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("token_dim", [16, 9])
def test_box_and_token_heads_see_the_adaptive_pooling_of_every_stage(token_dim: int) -> None:
    """Box pooling comes from the token maps where their cells are equal (4x4 tokens: the 4x4, 8x8 and 16x16
    stages), else from the stage itself (the 2x2 neck stage; every stage with 3x3 tokens)."""
    torch.manual_seed(0)
    gen = PromptGenerator3D(
        [12, 12, 12, 12, 10], [8, 8, 8, 8, 8], num_queries=3, token_dim=token_dim, widths=[8, 6, 6, 4]
    )
    stages, heads = [], {}
    for module in (gen.neck_stage, *gen.fuse):
        module.register_forward_hook(lambda _m, _i, out: stages.append(out))
    for name in ("box_head", "token_head"):
        getattr(gen, name).register_forward_pre_hook(lambda _m, args, name=name: heads.__setitem__(name, args[0]))
    with torch.no_grad():
        gen(vit_features(5, 2 * 3, 2, [12, 12, 12, 12, 10]), num_slices=3)
    assert [s.shape[-1] for s in stages] == [2, 4, 8, 16]
    for name, side in (("box_head", 2), ("token_head", gen.token_side)):
        expected = torch.cat([F.adaptive_avg_pool3d(s, (3, side, side)) for s in stages], dim=1)
        torch.testing.assert_close(heads[name], expected)
