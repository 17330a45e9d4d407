# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Per-method settings of the algorithm templates (the generic ones are in :mod:`masksam.auto3dseg.heuristics`).

MaskSAM: slices per patch (:func:`num_slices`, scaled with the anisotropy) and queries (:func:`num_queries`).
MA-SAM: slices per stack (:func:`num_slices` with a fixed stack of :data:`MA_SAM_SLICES`).
"""

from __future__ import annotations

import math

__all__ = ["MA_SAM_SLICES", "REFERENCE_ANISOTROPY", "REFERENCE_SLICES", "num_queries", "num_slices"]

#: The recipe MaskSAM's slice-count rule is anchored to: 9 slices at 3x anisotropy (AMOS CT at 0.8 x 0.8 x 2.5 mm).
REFERENCE_SLICES = 9
REFERENCE_ANISOTROPY = 3.0
#: MA-SAM's stack: 5 consecutive slices whatever the spacing (the paper's setting on every dataset).
MA_SAM_SLICES = 5


def num_slices(
    depth: int,
    anisotropy: float,
    min_slices: int = 3,
    max_slices: int = 12,
    *,
    reference_slices: int = REFERENCE_SLICES,
    reference_anisotropy: float | None = REFERENCE_ANISOTROPY,
) -> int:
    """Slices per patch T: the physical depth of the reference recipe's stack, at most the median depth.

    ``T = round(reference_slices * reference_anisotropy / anisotropy)`` (MaskSAM: 9 slices at 3x anisotropy), or
    ``reference_slices`` whatever the anisotropy when ``reference_anisotropy`` is None (MA-SAM: 5), clipped to
    ``[min_slices, max_slices]``, then to the median number of slices (so thin volumes, down to 2D images, keep
    T <= depth).

    Args:
        depth: median number of slices after resampling.
        anisotropy: slice spacing / in-plane spacing of the target spacing.
        min_slices: smallest T (unless the depth is smaller).
        max_slices: largest T.
        reference_slices: T of the method's recipe.
        reference_anisotropy: the anisotropy of that recipe; None: T does not follow the anisotropy.
    """
    if depth < 1 or not anisotropy > 0:
        raise ValueError(f"depth must be >= 1 and anisotropy > 0, got {depth} and {anisotropy}")
    if reference_slices < 1 or (reference_anisotropy is not None and not reference_anisotropy > 0):
        raise ValueError(
            f"reference_slices must be >= 1 and reference_anisotropy > 0 or None, got {reference_slices} and "
            f"{reference_anisotropy}"
        )
    if not 1 <= min_slices <= max_slices:
        raise ValueError(f"need 1 <= min_slices <= max_slices, got {min_slices} and {max_slices}")
    t = reference_slices
    if reference_anisotropy is not None:
        t = round(reference_slices * reference_anisotropy / anisotropy)
    return int(min(max(t, min_slices), max_slices, depth))


def num_queries(num_classes: int, min_margin: int = 4) -> int:
    """Queries Q: every class (background included) can be a target on a slice, plus a margin of spare queries.

    ``Q = K + max(min_margin, ceil(K / 2))``; for AMOS (K = 16) this is the paper's 24.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes (background included) must be >= 2, got {num_classes}")
    return int(num_classes + max(min_margin, math.ceil(num_classes / 2)))
