# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Convolutional branches beside SAM's image encoder: a torchvision ResNet's four stages, reshapers that bring a
CNN feature to a token grid, and up-sampling bridges for multi-scale fusion (SAM-UNet's parts)."""

from __future__ import annotations

import math
import os

import torch
import torchvision
from segment_anything.modeling.common import LayerNorm2d
from torch import nn

from masksam.backbones import CheckpointError, read_state_dict

__all__ = ["CNN_BRANCHES", "ResNetBranch", "Reshaper", "fusion_bridge", "log2_ratio"]


#: The convolutional branches: torchvision ResNets, with their four stages' channels.
CNN_BRANCHES: dict[str, tuple[int, int, int, int]] = {
    "resnet34": (64, 128, 256, 512),
    "resnet50": (256, 512, 1024, 2048),
}


def log2_ratio(a: int, b: int, what: str) -> int:
    """``log2(a / b)`` for two strides whose ratio is a power of two (negative when ``a < b``).

    Raises:
        ValueError: the ratio is not a power of two (``what`` names the part being built).
    """
    big, small = max(a, b), min(a, b)
    steps = int(round(math.log2(big / small)))
    if big % small or 2**steps * small != big:
        raise ValueError(f"{what}: strides {a} and {b} differ by a factor that is not a power of two")
    return steps if a >= b else -steps


class ResNetBranch(nn.Module):
    """A torchvision ResNet without its head, returning its four stages' outputs.

    The modules keep torchvision's names (``conv1``, ``bn1``, ``layer1``...), so torchvision-format weights load
    with :meth:`load_torchvision_weights`.

    Args:
        name: ``resnet34`` or ``resnet50`` (:data:`CNN_BRANCHES`); random initialisation (torchvision's).

    Attributes:
        channels: channels of the four stages; strides: their strides (4, 8, 16, 32).
    """

    def __init__(self, name: str = "resnet34") -> None:
        super().__init__()
        if name not in CNN_BRANCHES:
            raise ValueError(f"unknown cnn {name!r}; expected one of {sorted(CNN_BRANCHES)}")
        resnet = getattr(torchvision.models, name)(weights=None)
        self.name = name
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4
        self.channels = list(CNN_BRANCHES[name])
        self.strides = [4, 8, 16, 32]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(N, 3, S, S)`` -> four channels-first features ``(N, channels[k], S / strides[k], S / strides[k])``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            feats.append(x)
        return feats

    def load_torchvision_weights(self, path: str | os.PathLike[str]) -> None:
        """Load a torchvision-format state dict of the same ResNet (its ``fc`` head is ignored); nothing is downloaded.

        Raises:
            CheckpointError: unreadable file, another architecture, or missing/unexpected keys.
        """
        state = {k: v for k, v in read_state_dict(path).items() if not k.startswith("fc.")}
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        shapes = [
            f"{k}: file {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
            for k in own
            if k in state and state[k].shape != own[k].shape
        ]
        if missing or unexpected or shapes:
            raise CheckpointError(
                f"{os.fspath(path)!r} is not a torchvision {self.name} state dict (cnn={self.name!r}): "
                f"{len(missing)} missing keys {missing[:4]}, {len(unexpected)} unexpected keys {unexpected[:4]}, "
                f"{len(shapes)} shape mismatches {shapes[:2]}; give the weights of torchvision.models.{self.name} "
                "or change cnn"
            )
        self.load_state_dict(state)


class Reshaper(nn.Module):
    """Bring a CNN feature to a token grid: stride-2 3x3 convolutions (channels x2, LayerNorm2d, GELU) down, or
    x2 transposed convolutions (channels /2, LayerNorm2d, GELU) up, until the strides agree, then a 1x1 projection.

    The 1x1 projection starts at zero (weights and bias): an untrained reshaper outputs zeros, so what it is added
    to is unchanged at initialisation. The other convolutions are Kaiming-initialised as in the research code.

    Args:
        in_channels: channels of the CNN feature.
        in_stride: its stride.
        out_channels: channels of the target grid.
        out_stride: its stride.
    """

    def __init__(self, in_channels: int, in_stride: int, out_channels: int, out_stride: int) -> None:
        super().__init__()
        steps = log2_ratio(out_stride, in_stride, "Reshaper")
        layers: list[nn.Module] = []
        width = in_channels
        for _ in range(abs(steps)):
            if steps > 0:
                layers += [nn.Conv2d(width, 2 * width, kernel_size=3, stride=2, padding=1)]
                width *= 2
            else:
                if width < 2:
                    raise ValueError(f"Reshaper: {-steps} up-scalings halve {in_channels} channels below 1")
                layers += [nn.ConvTranspose2d(width, width // 2, kernel_size=2, stride=2)]
                width //= 2
            layers += [LayerNorm2d(width), nn.GELU()]
        self.resample = nn.Sequential(*layers)
        self.project = nn.Conv2d(width, out_channels, kernel_size=1)
        for m in self.resample:
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.project.weight)
        nn.init.zeros_(self.project.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, H, W)`` -> channels-first ``(N, out_channels, H * in_stride / out_stride, ...)``."""
        return self.project(self.resample(x))


def fusion_bridge(in_channels: int, hidden_channels: int, out_channels: int, steps: int) -> nn.Sequential:
    """Up-sample a feature by ``2**steps`` with x2 transposed convolutions (SAM's up-scaling pattern).

    ``steps >= 2``: ``ConvT(in, hidden)``, then ``LayerNorm2d, GELU, ConvT(hidden, hidden)`` repeated, and
    ``LayerNorm2d, GELU, ConvT(hidden, out)`` (the research code's bridges: 2 steps); ``steps == 1``:
    ``ConvT(in, out)``; ``steps == 0``: a 1x1 convolution.
    """
    if steps < 0:
        raise ValueError(f"a fusion bridge up-samples: steps must be >= 0, got {steps}")
    if steps == 0:
        return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size=1))
    if steps == 1:
        return nn.Sequential(nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2))
    layers: list[nn.Module] = [nn.ConvTranspose2d(in_channels, hidden_channels, kernel_size=2, stride=2)]
    for i in range(1, steps):
        out = out_channels if i == steps - 1 else hidden_channels
        layers += [LayerNorm2d(hidden_channels), nn.GELU(), nn.ConvTranspose2d(hidden_channels, out, 2, stride=2)]
    return nn.Sequential(*layers)
