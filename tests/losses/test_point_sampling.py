# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import pytest
import torch

from masksam.losses import point_sample, uncertainty_points


def _pixel_centres(h: int, w: int) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([(xs.flatten() + 0.5) / w, (ys.flatten() + 0.5) / h], dim=-1)  # (H*W, 2) as (x, y)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_pixel_centres_read_pixels(mode: str) -> None:
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(2, 3, 4, 6, generator=gen)
    coords = _pixel_centres(4, 6)[None].expand(2, -1, -1)
    values = point_sample(image, coords, mode=mode)
    assert values.shape == (2, 3, 24)
    torch.testing.assert_close(values, image.flatten(2), atol=1e-5, rtol=1e-5)


def test_x_is_width_and_bilinear_midpoint() -> None:
    image = torch.arange(5.0).repeat(3, 1)[None, None]  # value = column index, (1, 1, 3, 5)
    coords = torch.tensor([[[0.5 / 5, 0.5], [1.0 / 5, 0.5], [4.5 / 5, 0.5 / 3]]])  # (x, y)
    values = point_sample(image, coords)[0, 0]
    torch.testing.assert_close(values, torch.tensor([0.0, 0.5, 4.0]))


def test_gradient_reaches_input() -> None:
    image = torch.randn(1, 1, 8, 8, requires_grad=True)
    point_sample(image, torch.rand(1, 10, 2)).sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


def test_point_sample_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(1, 8, 8\)"):
        point_sample(torch.zeros(1, 8, 8), torch.rand(1, 3, 2))
    with pytest.raises(ValueError, match=r"\(2, 3, 2\)"):
        point_sample(torch.zeros(1, 1, 8, 8), torch.rand(2, 3, 2))
    with pytest.raises(ValueError, match="bicubic"):
        point_sample(torch.zeros(1, 1, 8, 8), torch.rand(1, 3, 2), mode="bicubic")


def test_uncertainty_points_concentrate_on_boundary() -> None:
    w = 32
    xs = (torch.arange(w) + 0.5) / w
    logits = ((xs - 0.5) * 40.0).repeat(w, 1)[None, None].repeat(3, 1, 1, 1).requires_grad_(True)  # zero at x=0.5
    gen = torch.Generator().manual_seed(0)
    focused = uncertainty_points(logits, 64, oversample_ratio=4.0, importance_sample_ratio=1.0, generator=gen)
    uniform = uncertainty_points(logits, 64, oversample_ratio=4.0, importance_sample_ratio=0.0, generator=gen)
    assert focused.shape == (3, 64, 2) and uniform.shape == (3, 64, 2)
    assert not focused.requires_grad
    assert float(focused.min()) >= 0.0 and float(focused.max()) <= 1.0
    focused_dist = (focused[..., 0] - 0.5).abs().mean()
    uniform_dist = (uniform[..., 0] - 0.5).abs().mean()
    assert focused_dist < 0.1 < uniform_dist


def test_uncertainty_points_mixes_random_points() -> None:
    logits = torch.zeros(2, 1, 8, 8)
    coords = uncertainty_points(logits, 10, oversample_ratio=2.0, importance_sample_ratio=0.75)
    assert coords.shape == (2, 10, 2)


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        ({"num_points": 0}, "0"),
        ({"oversample_ratio": 0.5}, "0.5"),
        ({"importance_sample_ratio": 1.5}, "1.5"),
    ],
)
def test_uncertainty_points_rejects_bad_arguments(kwargs: dict[str, float], bad: str) -> None:
    args = {"num_points": 4, "oversample_ratio": 2.0, "importance_sample_ratio": 0.5} | kwargs
    with pytest.raises(ValueError, match=bad):
        uncertainty_points(torch.zeros(1, 1, 4, 4), **args)  # type: ignore[arg-type]
