# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from masksam.networks import PromptGenerator3D


def vit_features(num: int, batch_slices: int, side: int, channels: list[int]) -> list[torch.Tensor]:
    """Encoder features as the ViT hands them over: channels-first views of channels-last tokens."""
    return [torch.randn(batch_slices, side, side, c).permute(0, 3, 1, 2) for c in channels[:num]]


def test_output_shapes_and_valid_boxes() -> None:
    gen = PromptGenerator3D([12, 12, 12, 12, 10], [8, 8, 8, 8, 8], num_queries=3, token_dim=16, widths=[8, 6, 6, 4])
    out = gen(vit_features(5, 2 * 3, 2, [12, 12, 12, 12, 10]), num_slices=3)
    assert out["aux_masks"].shape == (2, 3, 3, 16, 16)
    assert out["aux_tokens"].shape == (2, 3, 3, 16)
    boxes = out["aux_boxes"]
    assert boxes.shape == (2, 3, 3, 4) and torch.all((boxes >= 0) & (boxes <= 1))
    assert torch.all(boxes[..., 2] >= boxes[..., 0]) and torch.all(boxes[..., 3] >= boxes[..., 1])


@pytest.mark.parametrize("token_dim", [16, 9])
def test_box_and_token_heads_see_the_adaptive_pooling_of_every_stage(token_dim: int) -> None:
    """The box head sees every stage pooled to 2x2, the token head every stage pooled to the token side."""
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
