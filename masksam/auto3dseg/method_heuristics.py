# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Per-method settings of the algorithm templates (the generic ones are in :mod:`masksam.auto3dseg.heuristics`).

MaskSAM: slices per patch (:func:`num_slices`) and queries (:func:`num_queries`).
"""

from __future__ import annotations

import math

__all__ = ["REFERENCE_ANISOTROPY", "REFERENCE_SLICES", "num_queries", "num_slices"]

#: The recipe MaskSAM's slice-count rule is anchored to: 9 slices at 3x anisotropy (AMOS CT at 0.8 x 0.8 x 2.5 mm).
REFERENCE_SLICES = 9
REFERENCE_ANISOTROPY = 3.0


def num_slices(depth: int, anisotropy: float, min_slices: int = 3, max_slices: int = 12) -> int:
    """Slices per patch T: the physical depth of the reference recipe's stack, at most the median depth.

    ``T = round(9 * 3 / anisotropy)`` (9 slices at 3x anisotropy), clipped to ``[min_slices, max_slices]``, then
    to the median number of slices (so thin volumes, down to 2D images, keep T <= depth).

    Args:
        depth: median number of slices after resampling.
        anisotropy: slice spacing / in-plane spacing of the target spacing.
    """
    if depth < 1 or not anisotropy > 0:
        raise ValueError(f"depth must be >= 1 and anisotropy > 0, got {depth} and {anisotropy}")
    t = round(REFERENCE_SLICES * REFERENCE_ANISOTROPY / anisotropy)
    return int(min(max(t, min_slices), max_slices, depth))


def num_queries(num_classes: int, min_margin: int = 4) -> int:
    """Queries Q: every class (background included) can be a target on a slice, plus a margin of spare queries.

    ``Q = K + max(min_margin, ceil(K / 2))``; for AMOS (K = 16) this is the paper's 24.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes (background included) must be >= 2, got {num_classes}")
    return int(num_classes + max(min_margin, math.ceil(num_classes / 2)))
