# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Mirroring test-time augmentation around any MONAI inferer, as nnU-Net predicts (on by default there).

Each window the inner inferer hands to the network is also predicted mirrored along every non-empty subset of
``spatial_axes`` (``2**n - 1`` extra passes, 7 for three axes); every prediction is mirrored back and the
``2**n`` predictions are averaged before the inner inferer stitches the windows.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.inferers import Inferer

__all__ = ["MirroredInferer", "mirror_combinations"]


def mirror_combinations(spatial_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every non-empty subset of ``spatial_axes`` (``2**n - 1`` of them), smallest first.

    Raises:
        ValueError: if an axis is negative or repeated.
    """
    axes = [int(a) for a in spatial_axes]
    if any(a < 0 for a in axes) or len(set(axes)) != len(axes):
        raise ValueError(f"mirror_axes must be distinct spatial axes >= 0 (0, 1, 2 for H, W, D), got {list(axes)}")
    return [c for n in range(1, len(axes) + 1) for c in itertools.combinations(axes, n)]


class MirroredInferer(Inferer):
    """Run ``inferer`` with a network that averages its outputs over mirrored copies of each input window.

    Args:
        inferer: the inner inferer (``SlidingWindowInferer``, :class:`~masksam.inferers.SliceWindowInferer`...).
        spatial_axes: spatial axes to mirror, 0-based after batch and channel (``(0, 1, 2)``: H, W and D of
            ``(B, C, H, W, D)``); empty: no mirroring.
        enabled: False runs ``inferer`` alone (the ``mirror_tta`` switch of the configs).

    The network must return a tensor ``(B, K, *spatial)`` whose spatial axes match the input's; the average is of
    what it returns (class scores or probabilities for MaskSAM's :class:`~masksam.inferers.SemanticWrapper`,
    logits for MA-SAM, as nnU-Net v2 averages logits).
    """

    def __init__(self, inferer: Inferer, spatial_axes: Sequence[int] = (0, 1, 2), enabled: bool = True) -> None:
        super().__init__()
        if not callable(inferer):
            raise ValueError(f"inferer must be a MONAI Inferer (callable), got {type(inferer).__name__}")
        self.inferer = inferer
        self.combinations = mirror_combinations(spatial_axes)
        self.enabled = bool(enabled)

    def mirrored(self, network: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """``network`` made to average over the mirrored copies of its input (a callable for the inner inferer)."""

        def predict(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            spatial = x.ndim - 2
            if self.combinations and max(max(c) for c in self.combinations) >= spatial:
                raise ValueError(
                    f"mirror_axes {sorted({a for c in self.combinations for a in c})} do not fit inputs of "
                    f"{spatial} spatial dimensions (shape {tuple(x.shape)}): set --mirror_axes within 0..{spatial - 1}"
                )
            total = network(x, *args, **kwargs)
            if not isinstance(total, torch.Tensor):
                raise TypeError(f"mirroring TTA needs a network returning a tensor, got {type(total).__name__}")
            for axes in self.combinations:
                dims = [a + 2 for a in axes]
                total = total + torch.flip(network(torch.flip(x, dims), *args, **kwargs), dims)
            return total / (len(self.combinations) + 1)

        return predict

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Predict ``inputs (B, C, *spatial)`` with ``inferer``, mirroring each window when enabled."""
        if not self.enabled or not self.combinations:
            return self.inferer(inputs, network, *args, **kwargs)
        return self.inferer(inputs, self.mirrored(network), *args, **kwargs)
