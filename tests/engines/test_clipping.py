# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from monai.engines import SupervisedTrainer

from masksam.engines import GradientClipHandler


def one_step(
    max_norm: float | None,
    scale: float = 100.0,
    iterations: int = 1,
    accumulation_steps: int = 1,
    data: list[dict[str, torch.Tensor]] | None = None,
) -> torch.Tensor:
    """Train a zero-initialised linear layer with SGD (lr 1) on targets ``scale`` away for ``iterations`` steps."""
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 1, bias=False)
    torch.nn.init.zeros_(net.weight)
    data = data or [{"image": torch.ones(1, 4), "label": torch.full((1, 1), scale)}] * iterations
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=data,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=1.0),
        loss_function=torch.nn.MSELoss(),
        train_handlers=[GradientClipHandler(max_norm)],
        accumulation_steps=accumulation_steps,
    )
    trainer.run()
    return net.weight.detach()


def test_the_step_uses_the_clipped_gradient() -> None:
    free = one_step(None)
    clipped = one_step(12.0)
    assert free.norm() > 12.0 * 10  # MSE gradient 2 * 100 per weight: norm 400
    torch.testing.assert_close(clipped.norm(), torch.tensor(12.0))
    torch.testing.assert_close(clipped / clipped.norm(), free / free.norm())  # same direction


def test_small_gradients_are_left_alone() -> None:
    torch.testing.assert_close(one_step(12.0, scale=0.5), one_step(None, scale=0.5))


def test_with_accumulation_it_clips_the_summed_gradient_once() -> None:
    """Two accumulated steps pulling along different weights: only their sum is clipped (not the first alone)."""
    data = [
        {"image": torch.tensor([[1.0, 0.0, 0.0, 0.0]]), "label": torch.full((1, 1), 100.0)},
        {"image": torch.tensor([[0.0, 1.0, 0.0, 0.0]]), "label": torch.full((1, 1), 1.0)},
    ]
    weight = one_step(12.0, accumulation_steps=2, data=data)
    summed = torch.tensor([[100.0, 1.0, 0.0, 0.0]])  # -(sum of the two halved MSE gradients)
    torch.testing.assert_close(weight, 12.0 * summed / summed.norm())


def test_amp_gradients_are_unscaled_before_clipping() -> None:
    calls: list[str] = []
    param = torch.nn.Parameter(torch.zeros(3))
    param.grad = torch.full((3,), 100.0)
    optimizer = torch.optim.SGD([param], lr=1.0)
    scaler = SimpleNamespace(unscale_=lambda opt: calls.append("unscale") or param.grad.div_(10.0))
    engine = SimpleNamespace(
        optimizer=optimizer, amp=True, scaler=scaler, accumulation_steps=1, state=SimpleNamespace()
    )
    GradientClipHandler(1000.0)(engine)
    assert calls == ["unscale"]
    torch.testing.assert_close(param.grad, torch.full((3,), 10.0))  # unscaled, then under the bound


def test_bad_settings_name_the_setting() -> None:
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="grad_clip_norm"):
            GradientClipHandler(bad)
