# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""PNG figures: orthogonal slices with ground-truth / prediction overlays, and training curves.

Matplotlib is imported inside the functions and drawn through its Agg canvas directly (no ``pyplot``, no global
backend switch), so importing this module is cheap and safe on headless machines.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["save_overlay_png", "save_training_curves", "overlay_slices"]

logger = logging.getLogger(__name__)

_VIEWS = ("axial", "coronal", "sagittal")
# view -> (array axis held fixed, axis shown horizontally, axis shown vertically), for (H, W, D) = (x, y, z) arrays
_VIEW_AXES = {"axial": (2, 0, 1), "coronal": (1, 0, 2), "sagittal": (0, 1, 2)}
_HEADER_PX = 72


def _check_volume(name: str, arr: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    if arr is None:
        return None
    arr = np.asarray(arr)
    if arr.shape != shape:
        raise ValueError(f"{name} shape {arr.shape} does not match image shape {shape}")
    return arr


def overlay_slices(
    image_shape: Sequence[int], label: np.ndarray | None = None, pred: np.ndarray | None = None
) -> tuple[int, int, int]:
    """Pick the slice indices shown by :func:`save_overlay_png`: through the centre of mass of the foreground.

    The foreground is ``label > 0``, else ``pred > 0`` when there is no label (or it is empty); with neither, the
    volume centre is used. Along an axis where the slice through the centre of mass holds less than a quarter of the
    largest foreground area of any slice (e.g. the midline sagittal slice of bilateral structures), the slice with
    the largest area (nearest to the centre of mass among equals) is taken instead.

    Args:
        image_shape: ``(H, W, D)``.
        label: ground truth, or ``None``.
        pred: prediction, or ``None``.

    Returns:
        ``(i, j, k)``: the sagittal index along H, the coronal index along W and the axial index along D.
    """
    from scipy import ndimage

    for arr in (label, pred):
        if arr is None or not np.any(arr > 0):
            continue
        fg = np.asarray(arr) > 0
        com = ndimage.center_of_mass(fg)
        picked = []
        for axis, (c, n) in enumerate(zip(com, image_shape, strict=True)):
            index = int(np.clip(round(c), 0, n - 1))
            area = fg.sum(axis=tuple(a for a in range(3) if a != axis))
            if area[index] < 0.25 * area.max():
                best = np.flatnonzero(area == area.max())
                index = int(best[np.argmin(np.abs(best - c))])
            picked.append(index)
        return picked[0], picked[1], picked[2]
    return image_shape[0] // 2, image_shape[1] // 2, image_shape[2] // 2


def _class_colours(max_class: int) -> np.ndarray:
    """RGBA colours indexed by class value (row 0, background, is transparent); no grey, distinct hues first."""
    from matplotlib import colormaps

    tab10 = colormaps["tab10"]
    base = [tab10(i) for i in (0, 1, 2, 3, 4, 6, 8, 9, 5)]  # tab10 without its grey
    extra = [colormaps["hsv"](x) for x in np.linspace(0.0, 1.0, max(max_class - len(base), 0), endpoint=False)]
    colours = [(0.0, 0.0, 0.0, 0.0)] + (base + extra)[:max_class]
    return np.asarray(colours, dtype=np.float64)


def _rgba_overlay(seg2d: np.ndarray, colours: np.ndarray, alpha: float) -> np.ndarray:
    rgba = np.zeros((*seg2d.shape, 4), dtype=np.float32)
    idx = np.clip(seg2d.astype(np.int64), 0, len(colours) - 1)
    rgba[..., :3] = colours[idx, :3]
    rgba[..., 3] = np.where(seg2d > 0, alpha, 0.0)
    return rgba


def save_overlay_png(
    image: np.ndarray,
    label: np.ndarray | None,
    pred: np.ndarray | None,
    path: str | os.PathLike[str],
    class_names: Sequence[str] | None = None,
    slices: tuple[int, int, int] | None = None,
    title: str | None = None,
    spacing: Sequence[float] | None = None,
    panel_px: int = 256,
    alpha: float = 0.4,
) -> Path:
    """Save axial, coronal and sagittal slices of ``image`` with ground truth and prediction overlaid.

    One row per view (axial, coronal, sagittal), one column per given segmentation (ground truth, then
    prediction; a single image column when both are ``None``). Classes are drawn as translucent fills with a
    contour of the same colour; the legend names every class present in either segmentation. The image is shown
    in grey between its 0.5th and 99.5th percentiles. Slices are shown in array orientation with the origin at the
    lower left (axial: H across, W up; coronal: H across, D up; sagittal: W across, D up), so a RAS-oriented
    volume appears in neurological convention: subject's right on the right, anterior and superior up. Volumes
    stored otherwise (e.g. the pyradiomics CT cases, whose first two axes run right-to-left and
    anterior-to-posterior) should be reoriented first, e.g. with MONAI's
    ``Orientation(axcodes="RAS")``.

    The PNG is ``panel_px * n_columns`` pixels wide and ``panel_px * 3 + 72`` pixels high (the top 72 pixels hold
    the title and legend).

    Args:
        image: ``(H, W, D)`` intensity volume.
        label: ``(H, W, D)`` integer ground truth (0 = background), or ``None``.
        pred: ``(H, W, D)`` integer prediction, or ``None``.
        path: output PNG path; parent folders are created.
        class_names: names indexed by class value (index 0 is background); ``None`` gives ``"class <k>"``.
        slices: ``(i, j, k)`` indices along H, W, D for the sagittal, coronal and axial slices; ``None`` uses
            :func:`overlay_slices` (centre of mass of the foreground).
        title: figure title.
        spacing: voxel size along H, W, D (sets the panel aspect ratio); ``None`` means isotropic.
        panel_px: size of each square panel in pixels.
        alpha: opacity of the fills.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: on non-3D arrays, shape mismatches, slice indices out of range, a class value with no name, a
            wrong ``spacing`` length or non-positive ``panel_px``.
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"image must be a 3D (H, W, D) array, got shape {image.shape}")
    label = _check_volume("label", label, image.shape)
    pred = _check_volume("pred", pred, image.shape)
    if panel_px <= 0:
        raise ValueError(f"panel_px must be positive, got {panel_px}")
    if spacing is not None and (len(spacing) != 3 or any(s <= 0 for s in spacing)):
        raise ValueError(f"spacing must be 3 positive numbers, got {spacing}")
    if slices is None:
        slices = overlay_slices(image.shape, label, pred)
    if len(slices) != 3 or any(not 0 <= s < n for s, n in zip(slices, image.shape, strict=False)):
        raise ValueError(f"slices {slices} out of range for image shape {image.shape}")

    segs = [(n, s) for n, s in (("ground truth", label), ("prediction", pred)) if s is not None]
    present = sorted({int(v) for _, s in segs for v in np.unique(s) if v > 0})
    max_class = max(present, default=0)
    if class_names is not None and max_class >= len(class_names):
        raise ValueError(f"class value {max_class} has no name in class_names (length {len(class_names)})")
    names = list(class_names) if class_names is not None else [f"class {k}" for k in range(max_class + 1)]

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    colours = _class_colours(max_class)
    lo, hi = np.percentile(image, [0.5, 99.5]) if image.size else (0.0, 1.0)
    spacing = tuple(spacing) if spacing is not None else (1.0, 1.0, 1.0)

    ncols = max(len(segs), 1)
    width, height = panel_px * ncols, panel_px * len(_VIEWS) + _HEADER_PX
    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor="black")
    FigureCanvasAgg(fig)
    top = 1.0 - _HEADER_PX / height
    fig.subplots_adjust(left=0.0, right=1.0, bottom=0.0, top=top, wspace=0.02, hspace=0.02)
    axes = fig.subplots(len(_VIEWS), ncols, squeeze=False)

    for row, view in enumerate(_VIEWS):
        fixed, horiz, vert = _VIEW_AXES[view]
        index = [slice(None)] * 3
        index[fixed] = slices[fixed]

        def cut(arr: np.ndarray, index: list[Any] = index, horiz: int = horiz, vert: int = vert) -> np.ndarray:
            plane = arr[tuple(index)]  # remaining axes in increasing order
            return plane.T if horiz < vert else plane  # rows = vertical axis for imshow

        aspect = spacing[vert] / spacing[horiz]
        for col in range(ncols):
            ax = axes[row, col]
            ax.set_axis_off()
            ax.imshow(cut(image), cmap="gray", vmin=lo, vmax=hi, origin="lower", aspect=aspect, interpolation="nearest")
            if segs:
                seg_name, seg = segs[col]
                seg2d = cut(seg)
                ax.imshow(_rgba_overlay(seg2d, colours, alpha), origin="lower", aspect=aspect, interpolation="nearest")
                for k in np.unique(seg2d):
                    if k > 0:
                        ax.contour(seg2d == k, levels=[0.5], colors=[colours[int(k)]], linewidths=0.8, origin="lower")
                if row == 0:
                    ax.set_title(seg_name, color="white", fontsize=9, pad=2)
            ax.text(
                0.02, 0.98, f"{view} {slices[fixed]}", color="white", fontsize=7, ha="left", va="top",
                transform=ax.transAxes, bbox={"facecolor": "black", "alpha": 0.6, "pad": 1, "linewidth": 0},
            )  # fmt: skip

    if title:
        fig.suptitle(title, color="white", fontsize=10, y=1.0 - 4 / height, va="top")
    if present:
        handles = [Patch(facecolor=colours[k], edgecolor=colours[k], label=names[k]) for k in present]
        fig.legend(
            handles=handles, loc="upper center", bbox_to_anchor=(0.5, 1.0 - 22 / height), ncol=min(len(handles), 4),
            fontsize=7, frameon=False, labelcolor="white", handlelength=1.0, columnspacing=1.0,
        )  # fmt: skip

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, facecolor=fig.get_facecolor())
    logger.info("saved overlay %s (slices %s)", out, slices)
    return out


def save_training_curves(
    history: Mapping[str, Sequence[float]], path: str | os.PathLike[str], title: str | None = None
) -> Path:
    """Plot loss and metric curves against epoch and save them as a PNG.

    Series whose key contains ``"loss"`` go to the left panel, all others (Dice and other metrics) to the right
    panel; with only one kind there is a single panel. Each series is plotted against ``1..len(series)``, so give
    one value per epoch (or per validation round, documented in the key name).

    Args:
        history: series name -> values, e.g. ``{"train_loss": [...], "val_dice": [...]}``.
        path: output PNG path; parent folders are created.
        title: figure title.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: if ``history`` is empty or a series is empty.
    """
    if not history:
        raise ValueError("history is empty: nothing to plot")
    empty = [k for k, v in history.items() if len(v) == 0]
    if empty:
        raise ValueError(f"history series {empty} are empty")
    groups = {
        "loss": {k: v for k, v in history.items() if "loss" in k.lower()},
        "metric": {k: v for k, v in history.items() if "loss" not in k.lower()},
    }
    groups = {g: s for g, s in groups.items() if s}

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(5.0 * len(groups), 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    for ax, (group, series) in zip(axes, groups.items(), strict=True):
        for key, values in series.items():
            y = np.asarray(values, dtype=np.float64)
            ax.plot(np.arange(1, len(y) + 1), y, marker="o" if len(y) < 30 else None, markersize=3, label=key)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(group)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    logger.info("saved training curves %s", out)
    return out
