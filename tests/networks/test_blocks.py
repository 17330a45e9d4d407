# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import pytest
import torch
from torch import nn

from masksam.networks import PatchConvTranspose3d


@pytest.mark.parametrize("kernel", [(1, 2, 2), (2, 2, 2), (1, 3, 2)])
@pytest.mark.parametrize("bias", [True, False])
def test_equals_conv_transpose_forward_and_backward(kernel: tuple[int, int, int], bias: bool) -> None:
    torch.manual_seed(0)
    ref = nn.ConvTranspose3d(5, 3, kernel, stride=kernel, bias=bias)
    ours = PatchConvTranspose3d(5, 3, kernel, bias=bias)
    ours.load_state_dict(ref.state_dict())  # same parameter names and shapes
    x = torch.randn(2, 5, 3, 4, 6)
    weights = torch.randn(2, 3, 3 * kernel[0], 4 * kernel[1], 6 * kernel[2])
    grads = []
    for module in (ref, ours):
        xi = x.clone().requires_grad_(True)
        out = module(xi)
        (out * weights).sum().backward()
        grads.append((out.detach(), xi.grad, module.weight.grad, module.bias.grad if bias else None))
    for a, b in zip(grads[0], grads[1], strict=True):
        if a is not None:
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-4)


def test_other_calls_take_conv_transpose3d_itself() -> None:
    """output_size, an unbatched input, or attributes changed after construction: nn.ConvTranspose3d's path."""
    torch.manual_seed(0)
    ref = nn.ConvTranspose3d(2, 3, (1, 2, 2), stride=(1, 2, 2))
    up = PatchConvTranspose3d(2, 3, (1, 2, 2))
    up.load_state_dict(ref.state_dict())
    x = torch.randn(1, 2, 2, 3, 3)
    torch.testing.assert_close(up(x, output_size=[2, 6, 6]), ref(x, output_size=[2, 6, 6]))
    torch.testing.assert_close(up(x[0]), ref(x[0]))
    up.padding = ref.padding = (0, 1, 1)
    torch.testing.assert_close(up(x), ref(x))
    assert up(x).shape == (1, 3, 2, 4, 4)


def test_keeps_a_channels_last_input_layout() -> None:
    up = PatchConvTranspose3d(4, 2, (1, 2, 2))
    x = torch.randn(1, 4, 2, 3, 3).contiguous(memory_format=torch.channels_last_3d)
    assert up(x).is_contiguous(memory_format=torch.channels_last_3d)
