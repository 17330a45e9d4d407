# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import pytest
import torch
from torch import nn

from masksam.networks import ChannelsLastInstanceNorm3d, ConvBlock3D, PatchConvTranspose3d, blocks, is_channels_last_3d

CL = torch.channels_last_3d


@pytest.mark.parametrize("kernel", [(1, 2, 2), (2, 2, 2), (1, 3, 2)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_equals_conv_transpose_forward_and_backward(
    kernel: tuple[int, int, int], bias: bool, channels_last: bool
) -> None:
    torch.manual_seed(0)
    ref = nn.ConvTranspose3d(5, 3, kernel, stride=kernel, bias=bias)
    ours = PatchConvTranspose3d(5, 3, kernel, bias=bias)
    ours.load_state_dict(ref.state_dict())  # same parameter names and shapes
    x = torch.randn(2, 5, 3, 4, 6)
    if channels_last:
        x = x.contiguous(memory_format=CL)
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
    with torch.no_grad():  # the bias goes in with the placement copy
        torch.testing.assert_close(ours(x), grads[0][0], rtol=1e-5, atol=1e-4)
        assert is_channels_last_3d(ours(x)) == channels_last


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
    x = torch.randn(1, 4, 2, 3, 3).contiguous(memory_format=CL)
    assert up(x).is_contiguous(memory_format=CL)
    with torch.no_grad():
        assert up(x).is_contiguous(memory_format=CL)


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("grad", [False, True])
def test_channels_last_instance_norm_equals_instance_norm(affine: bool, grad: bool) -> None:
    torch.manual_seed(0)
    ref = nn.InstanceNorm3d(4, affine=affine)
    ours = ChannelsLastInstanceNorm3d(4, affine=affine)
    if affine:
        nn.init.normal_(ref.weight)
        nn.init.normal_(ref.bias)
    ours.load_state_dict(ref.state_dict())
    # 2 samples with far-apart means and scales per channel; 5 x 6 x 7 voxels
    x = torch.randn(2, 4, 5, 6, 7) * torch.tensor([1.0, 3.0, 0.1, 10.0]).view(1, 4, 1, 1, 1) + 5.0
    x[1] = -2 * x[1]
    weights = torch.randn(x.shape)
    outs = []
    for module, xi in ((ref, x.clone()), (ours, x.contiguous(memory_format=CL))):
        xi.requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            out = module(xi)
        assert is_channels_last_3d(out) == (module is ours and not grad)  # under autograd: PyTorch's kernel
        if grad:
            (out * weights).sum().backward()
            outs.append((out.detach(), xi.grad) + ((module.weight.grad, module.bias.grad) if affine else ()))
        else:
            outs.append((out,))
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)  # gradients of the 0.1-scale channel: x10


def test_channels_last_instance_norm_falls_back_to_the_native_kernel() -> None:
    """Channels-first inputs, half types and running statistics take nn.InstanceNorm3d's own path."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 2, 4, 4)
    ours = ChannelsLastInstanceNorm3d(3)
    assert ours(x).is_contiguous()
    cl = x.contiguous(memory_format=CL).bfloat16()
    torch.testing.assert_close(ours(cl), nn.InstanceNorm3d(3)(cl))
    assert not is_channels_last_3d(ours(cl))  # PyTorch's kernel returns channels-first
    with torch.no_grad():
        assert not is_channels_last_3d(ours(cl))
    tracked = ChannelsLastInstanceNorm3d(3, track_running_stats=True)
    tracked(x.contiguous(memory_format=CL))
    assert tracked.running_mean.abs().sum() > 0  # the native kernel updated the running statistics


def test_chunked_paths_without_autograd_equal_the_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """Row blocks of the up-sampling product and voxel chunks of the variance sums: same results."""
    torch.manual_seed(0)
    up = PatchConvTranspose3d(3, 2, (2, 2, 2))
    norm = ChannelsLastInstanceNorm3d(2, affine=True)
    nn.init.normal_(norm.weight)
    x = torch.randn(2, 3, 2, 5, 4).contiguous(memory_format=CL)
    whole = norm(up(x)).detach()  # under autograd: no chunks
    monkeypatch.setattr(blocks, "PATCH_CHUNK_ELEMENTS", 1)  # one row of a plane per block
    monkeypatch.setattr(blocks, "_VAR_CHUNK_VOXELS", 7)
    with torch.no_grad():
        y = up(x)
        torch.testing.assert_close(norm(y), whole)
        out = norm.forward_inplace(y)
    assert out.data_ptr() == y.data_ptr()  # normalised in place
    torch.testing.assert_close(out, whole)


def test_conv_block_normalises_in_place_only_when_nobody_else_sees_the_convolution() -> None:
    torch.manual_seed(0)
    block = ConvBlock3D(3, 4)
    x = torch.randn(1, 3, 2, 6, 6).contiguous(memory_format=CL)
    ref = block(x).detach()
    seen = []
    handle = block[0].conv.register_forward_hook(lambda _m, _i, out: seen.append(out))
    with torch.no_grad():
        hooked = block(x)
    handle.remove()
    assert not torch.equal(seen[0], hooked)  # the hook's tensor kept the convolution's values
    with torch.no_grad():
        fast = block(x)
    torch.testing.assert_close(fast, ref)
    torch.testing.assert_close(hooked, ref)
