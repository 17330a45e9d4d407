# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Point sampling of mask maps (PointRend / Mask2Former style).

Coordinates are normalised ``(x, y)`` in ``[0, 1]`` with ``x`` along the width ``W`` and ``y`` along the
height ``H``; ``(0, 0)`` is the outer corner of the top-left pixel, ``(1, 1)`` the outer corner of the
bottom-right pixel (``align_corners=False`` convention), so the same coordinates address the same
physical location in maps of different resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["point_sample", "uncertainty_points"]


def point_sample(input: Tensor, coords: Tensor, mode: str = "bilinear") -> Tensor:
    """Sample ``input`` at normalised point coordinates with :func:`torch.nn.functional.grid_sample`.

    Args:
        input: ``(N, C, H, W)`` feature or logit maps.
        coords: ``(N, P, 2)`` point coordinates ``(x, y)`` in ``[0, 1]``.
        mode: ``"bilinear"`` or ``"nearest"`` interpolation.

    Returns:
        ``(N, C, P)`` sampled values (differentiable with respect to ``input``). Points outside the map
        read zero padding.

    Raises:
        ValueError: on a wrong ``input``/``coords`` shape or an unknown ``mode``.
    """
    if input.ndim != 4:
        raise ValueError(f"input must have shape (N, C, H, W), got shape {tuple(input.shape)}.")
    if coords.ndim != 3 or coords.shape[-1] != 2 or coords.shape[0] != input.shape[0]:
        raise ValueError(f"coords must have shape (N, P, 2) with N={input.shape[0]}, got shape {tuple(coords.shape)}.")
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}.")
    grid = (2.0 * coords.to(input.dtype) - 1.0).unsqueeze(2)  # (N, P, 1, 2) in [-1, 1]
    return F.grid_sample(input, grid, mode=mode, padding_mode="zeros", align_corners=False).squeeze(3)


def uncertainty_points(
    logits: Tensor,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """PointRend importance sampling: favour points where the mask logit is close to zero.

    ``round(num_points * oversample_ratio)`` random candidates are drawn per map, their uncertainty
    ``-|logit|`` is read with :func:`point_sample`, the ``int(num_points * importance_sample_ratio)`` most
    uncertain are kept and the rest of the ``num_points`` are drawn uniformly at random. Runs under
    :func:`torch.no_grad`.

    Args:
        logits: ``(N, 1, H, W)`` mask logits (class-agnostic, e.g. the matched predictions).
        num_points: number of points ``P`` per map, ``> 0``.
        oversample_ratio: candidate oversampling factor, ``>= 1``.
        importance_sample_ratio: fraction of the points chosen by uncertainty, in ``[0, 1]``.
        generator: optional random generator (on the device of ``logits``) for reproducibility.

    Returns:
        ``(N, P, 2)`` coordinates ``(x, y)`` in ``[0, 1]``, in the dtype of ``logits`` when floating.

    Raises:
        ValueError: on a wrong ``logits`` shape or an out-of-range argument.
    """
    if logits.ndim != 4 or logits.shape[1] != 1:
        raise ValueError(f"logits must have shape (N, 1, H, W), got shape {tuple(logits.shape)}.")
    if num_points <= 0:
        raise ValueError(f"num_points must be positive, got {num_points}.")
    if oversample_ratio < 1.0:
        raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}.")
    if not 0.0 <= importance_sample_ratio <= 1.0:
        raise ValueError(f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}.")
    num_maps = logits.shape[0]
    dtype = logits.dtype if logits.is_floating_point() else torch.float32
    num_candidates = max(int(round(num_points * oversample_ratio)), num_points)
    num_uncertain = int(num_points * importance_sample_ratio)
    num_random = num_points - num_uncertain
    with torch.no_grad():
        candidates = torch.rand(num_maps, num_candidates, 2, device=logits.device, dtype=dtype, generator=generator)
        uncertainty = -point_sample(logits.detach().to(dtype), candidates).abs()[:, 0]  # (N, candidates)
        top = uncertainty.topk(num_uncertain, dim=1).indices  # (N, num_uncertain)
        chosen = torch.gather(candidates, 1, top[..., None].expand(-1, -1, 2))
        if num_random > 0:
            extra = torch.rand(num_maps, num_random, 2, device=logits.device, dtype=dtype, generator=generator)
            chosen = torch.cat([chosen, extra], dim=1)
    return chosen
