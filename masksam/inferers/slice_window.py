# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Slice-window inference for networks that segment stacks of T slices (MA-SAM)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.inferers import Inferer, SlidingWindowInferer
from monai.utils import convert_to_dst_type

__all__ = ["SliceWindowInferer"]


class SliceWindowInferer(Inferer):
    """Slide a T-slice window through the volume and average each slice's class probabilities.

    The volume is padded along the slice axis by replicating its edge slices (``(T-1)//2`` before, ``T//2``
    after), so that with ``slice_stride`` 1 a window is centred on every slice, as in MA-SAM's inference.
    Windows run through MONAI's ``SlidingWindowInferer`` with ``roi_size = (S, S, T)`` (in-plane windows
    overlapping by ``overlap``, so volumes of any in-plane size work), the network's logits become softmax
    probabilities per window, and every voxel gets the mean over the windows that hold it (``mode``
    "constant", the paper; "gaussian" weighs window centres more, in-plane and across slices). Slices
    replicated as padding are dropped from the result. ``slice_stride`` T places each slice in one window
    (T times fewer windows); the last window is aligned with the volume's end.

    Args:
        roi_size: ``(S, S, T)`` the network's input size, slices last.
        slice_stride: step of the window along the slice axis, in ``1..T``.
        overlap: in-plane overlap of neighbouring windows, in ``[0, 1)``.
        sw_batch_size: windows per network call.
        mode: ``constant`` or ``gaussian`` blending (MONAI's).
        sigma_scale: of the gaussian mode.
        sw_device: where windows run (default: the input's device).
        device: where the output is stitched (default: the input's device).
        progress: show a progress bar over the windows.

    Call ``inferer(inputs (B, C, H, W, D), network)`` with ``network`` mapping ``(B', C, S, S, T)`` to logits
    ``(B', K, S, S, T)``; returns float32 probabilities ``(B, K, H, W, D)`` that sum to 1 over K (a
    ``MetaTensor`` with the input's metadata when the input is one).
    """

    def __init__(
        self,
        roi_size: Sequence[int],
        slice_stride: int = 1,
        overlap: float = 0.25,
        sw_batch_size: int = 1,
        mode: str = "constant",
        sigma_scale: float = 0.125,
        sw_device: torch.device | str | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
    ) -> None:
        super().__init__()
        roi_size = [int(v) for v in roi_size]
        if len(roi_size) != 3 or min(roi_size) < 1:
            raise ValueError(f"roi_size must be (S, S, T) with positive sides, got {roi_size}")
        num_slices = roi_size[-1]
        if not 1 <= slice_stride <= num_slices:
            raise ValueError(f"slice_stride must be in 1..{num_slices} (the window's T), got {slice_stride}")
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        self.num_slices = num_slices
        self.slice_stride = slice_stride
        # MONAI's window step along an axis is int(T * (1 - overlap)); half a slice of margin makes it exact.
        slice_overlap = max(0.0, (num_slices - slice_stride - 0.5) / num_slices)
        self.windows = SlidingWindowInferer(
            roi_size=roi_size,
            sw_batch_size=sw_batch_size,
            overlap=(overlap, overlap, slice_overlap),
            mode=mode,
            sigma_scale=sigma_scale,
            sw_device=sw_device,
            device=device,
            progress=progress,
        )

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """``inputs (B, C, H, W, D)`` -> probabilities ``(B, K, H, W, D)``; extra arguments go to ``network``."""
        if inputs.ndim != 5:
            raise ValueError(f"expected (B, C, H, W, D) volumes, got shape {tuple(inputs.shape)}")

        def probabilities(window: torch.Tensor) -> torch.Tensor:
            return network(window, *args, **kwargs).float().softmax(dim=1)

        before, after = (self.num_slices - 1) // 2, self.num_slices // 2
        x = torch.as_tensor(inputs)
        padded = F.pad(x, (before, after, 0, 0, 0, 0), mode="replicate")
        out = self.windows(padded, probabilities)
        out = torch.as_tensor(out)[..., before : before + x.shape[-1]]
        return convert_to_dst_type(out, inputs, dtype=out.dtype, device=out.device)[0]
