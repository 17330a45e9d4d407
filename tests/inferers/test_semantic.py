# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import pytest
import torch

from masksam.inferers import SemanticWrapper, semantic_scores


@pytest.mark.parametrize("grad", [True, False])  # without autograd: slice by slice into one output
@pytest.mark.parametrize("channels_last", [False, True])  # MaskSAM's masks come channels-last
def test_semantic_scores_match_the_definition(grad: bool, channels_last: bool) -> None:
    logits, masks = torch.randn(2, 5, 4), torch.randn(2, 5, 6, 7)
    with torch.set_grad_enabled(grad):
        scores = semantic_scores(
            logits, masks.contiguous(memory_format=torch.channels_last) if channels_last else masks
        )
    assert scores.shape == (2, 3, 6, 7)
    expected = torch.zeros(2, 3, 6, 7)
    for n in range(2):
        for q in range(5):
            p = logits[n, q].softmax(-1)
            for k in range(3):
                expected[n, k] += p[k] * masks[n, q].sigmoid()
    torch.testing.assert_close(scores, expected)


def test_confident_queries_reproduce_their_masks() -> None:
    logits = torch.full((1, 2, 3), -30.0)
    logits[0, 0, 1] = 30.0  # query 0 -> class 1
    logits[0, 1, 2] = 30.0  # query 1 -> no-object
    masks = torch.full((1, 2, 4, 4), -30.0)
    masks[0, 0, :2] = 30.0
    masks[0, 1] = 30.0
    scores = semantic_scores(logits, masks)
    torch.testing.assert_close(scores[0, 1], (masks[0, 0] > 0).float(), atol=1e-6, rtol=0)
    assert scores[0, 0].abs().max() < 1e-6, "a no-object query contributes nothing"


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="equal N, Q"):
        semantic_scores(torch.randn(2, 5, 4), torch.randn(2, 4, 6, 7))


class _FakeNet(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        b, _, h, w, d = x.shape
        masks = x[:, 0].permute(0, 3, 1, 2).reshape(b * d, 1, h, w).repeat(1, 2, 1, 1)
        logits = torch.tensor([[5.0, -5.0, -5.0], [-5.0, 5.0, -5.0]]).expand(b * d, 2, 3)
        return {"pred_logits": logits, "pred_masks": masks}


def test_wrapper_layout_and_normalisation() -> None:
    x = torch.randn(2, 1, 5, 6, 3)
    scores = SemanticWrapper(_FakeNet())(x)
    assert scores.shape == (2, 2, 5, 6, 3)
    # channel k at voxel (b, h, w, d) comes from slice n = b * D + d of the network's output
    p = torch.tensor([5.0, -5.0, -5.0]).softmax(-1)[0] + torch.tensor([-5.0, 5.0, -5.0]).softmax(-1)[0]
    torch.testing.assert_close(scores[1, 0, :, :, 2], p * x[1, 0, :, :, 2].sigmoid())
    normed = SemanticWrapper(_FakeNet(), normalize=True)(x)
    torch.testing.assert_close(normed.sum(1), torch.ones(2, 5, 6, 3))
    with torch.no_grad():  # normalised in place
        torch.testing.assert_close(SemanticWrapper(_FakeNet(), normalize=True)(x), normed)


@pytest.mark.parametrize("grad", [True, False])
def test_semantic_scores_are_float32_under_autocast(grad: bool) -> None:
    logits, masks = torch.randn(2, 5, 4), torch.randn(2, 5, 6, 7)
    expected = semantic_scores(logits, masks)
    with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16):
        scores = semantic_scores(logits, masks)
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, expected)
