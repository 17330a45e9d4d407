# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Prompts simulated from labels for training the prompted methods (Med-SA, SAM-UNet), and iterative error clicks.

Everything works per slice of a ``(H, W, D)`` structure mask (slice axis last, model space) and returns SAM's
per-slice encoding of :mod:`masksam.transforms.prompt_space`: ``(D, P, 2)`` float32 ``(i, j)`` coordinates and
``(D, P)`` int64 labels (1 foreground click, 0 background click, 2/3 box corners, -1 padding), with
``P = num_points + 2`` (clicks first, the box in the last two slots). Slices without the structure get no prompt.
Randomness comes from a ``numpy.random.RandomState`` (MONAI's ``Randomizable.R``, seeded by ``set_random_state``);
the sampling is vectorised over slices and voxels.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable
from scipy.ndimage import distance_transform_edt

from masksam.transforms.prompt_space import empty_slice_prompts

__all__ = [
    "RandPromptsd",
    "error_region_clicks",
    "jitter_boxes",
    "pack_slice_prompts",
    "random_voxels",
    "tight_boxes",
]


def _as_mask(mask: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    mask = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
    if mask.ndim == 4 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.ndim != 3:
        raise ValueError(f"{name} must be (H, W, D) or (1, H, W, D), got shape {tuple(mask.shape)}")
    return mask.as_subclass(torch.Tensor) > 0


def tight_boxes(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-slice tight boxes of a structure.

    Args:
        mask: ``(H, W, D)`` or ``(1, H, W, D)``, nonzero inside the structure.

    Returns:
        ``boxes`` float32 ``(D, 4)`` ``(i0, j0, i1, j1)``, corners the first and last voxel indices (zeros where
        absent), and ``present`` bool ``(D,)``.
    """
    mask = _as_mask(mask, "mask")
    rows, cols = mask.any(dim=1).T, mask.any(dim=0).T  # (D, H), (D, W)
    present = rows.any(dim=1)

    def first_last(hits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.arange(hits.shape[1])
        first = torch.where(hits, index, hits.shape[1]).amin(dim=1)
        last = torch.where(hits, index, -1).amax(dim=1)
        return first, last

    (i0, i1), (j0, j1) = first_last(rows), first_last(cols)
    boxes = torch.stack([i0, j0, i1, j1], dim=1).float() * present[:, None]
    return boxes, present


def random_voxels(mask: torch.Tensor, k: int, rng: np.random.RandomState) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` distinct random voxels of a mask on every slice (uniform, without replacement).

    Args:
        mask: ``(H, W, D)`` or ``(1, H, W, D)``.
        k: voxels per slice.
        rng: the random state.

    Returns:
        ``coords`` float32 ``(D, k, 2)`` ``(i, j)`` and ``valid`` bool ``(D, k)`` (false where the slice has fewer
        than ``k`` mask voxels).
    """
    mask = _as_mask(mask, "mask")
    height, width, depth = mask.shape
    if k == 0:
        return torch.zeros(depth, 0, 2), torch.zeros(depth, 0, dtype=torch.bool)
    scores = torch.as_tensor(rng.random_sample((depth, height * width)), dtype=torch.float32)
    scores = torch.where(mask.permute(2, 0, 1).reshape(depth, -1), scores, -1.0)
    top, index = scores.topk(min(k, height * width), dim=1)
    coords = torch.stack([index // width, index % width], dim=-1).float()
    valid = top >= 0
    if k > height * width:
        pad = k - height * width
        coords = torch.cat([coords, torch.zeros(depth, pad, 2)], dim=1)
        valid = torch.cat([valid, torch.zeros(depth, pad, dtype=torch.bool)], dim=1)
    return coords * valid[..., None], valid


def jitter_boxes(
    boxes: torch.Tensor, shape: Sequence[int], rng: np.random.RandomState, fraction: float = 0.1, max_px: float = 5.0
) -> torch.Tensor:
    """Boxes with Gaussian corner noise, as in box-prompted SAM training.

    Each of the four coordinates moves by ``N(0, (fraction * min(box height, box width))^2)`` clipped to
    ``[-max_px, max_px]``, with box sides counted in voxels (``i1 - i0 + 1``); the result is clamped to the slice and
    its corners re-ordered.

    Args:
        boxes: ``(D, 4)`` ``(i0, j0, i1, j1)``.
        shape: the slice's ``(H, W)``.
        rng: the random state.
        fraction: the noise std as a fraction of the box's shorter side.
        max_px: the largest move of a coordinate, in voxels.

    Returns:
        ``(D, 4)`` float32 jittered boxes.
    """
    sides = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], dim=1) + 1
    std = fraction * sides.amin(dim=1, keepdim=True)
    noise = torch.as_tensor(rng.standard_normal(tuple(boxes.shape)), dtype=torch.float32) * std
    moved = boxes + noise.clamp(-max_px, max_px)
    upper = torch.tensor([shape[0] - 1, shape[1] - 1] * 2, dtype=torch.float32)
    moved = torch.minimum(moved.clamp(min=0), upper)
    return torch.cat([torch.minimum(moved[:, :2], moved[:, 2:]), torch.maximum(moved[:, :2], moved[:, 2:])], dim=1)


def pack_slice_prompts(
    click_coords: torch.Tensor,
    click_labels: torch.Tensor,
    boxes: torch.Tensor | None,
    box_present: torch.Tensor | None,
    num_points: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-slice clicks and boxes -> ``(D, num_points + 2, 2)`` coords and ``(D, num_points + 2)`` labels.

    Args:
        click_coords: ``(D, k, 2)`` with ``k <= num_points``; click_labels: ``(D, k)`` (1, 0, or -1 for none).
        boxes: ``(D, 4)`` or ``None``; box_present: ``(D,)`` bool, which slices get their box.
        num_points: click slots (``P = num_points + 2``).
    """
    depth, k = click_labels.shape
    if k > num_points:
        raise ValueError(f"{k} clicks per slice do not fit num_points={num_points}")
    coords, labels = empty_slice_prompts(depth, num_points)
    coords[:, :k] = click_coords * (click_labels >= 0)[..., None]
    labels[:, :k] = click_labels
    if boxes is not None and box_present is not None:
        coords[:, num_points:] = boxes.reshape(depth, 2, 2) * box_present[:, None, None]
        labels[:, num_points:] = torch.where(box_present[:, None], torch.tensor([2, 3]), -1)
    return coords, labels


class RandPromptsd(Randomizable, MapTransform):
    """Pick a structure of a label patch, make its binary target and simulate per-slice prompts (training).

    From the ``(1, H, W, D)`` class-valued label under ``keys`` (one key) one class present in the patch is drawn
    (uniformly among ``classes``, or among all nonzero classes), its mask written to ``target_key`` as float32
    ``(1, H, W, D)`` and its prompts to ``coords_key``/``labels_key`` (see the module docstring). With probability
    ``box_prob`` the whole case is box-prompted: each slice showing the structure gets its tight box jittered by
    :func:`jitter_boxes`. Otherwise each such slice gets ``num_positive`` clicks on random structure voxels and
    ``num_negative`` on random voxels outside it (fewer where the slice has fewer voxels). The drawn class goes to
    ``class_key``. A patch without any of the classes gets an all-zero target, no prompt, and class 0.

    Args:
        keys: the label key.
        target_key, coords_key, labels_key, class_key: output keys.
        classes: the classes to draw from (``None``: every nonzero value present).
        num_positive: positive clicks per slice; num_negative: negative clicks per slice.
        num_points: click slots (``P = num_points + 2``); default ``num_positive + num_negative``.
        box_prob: probability of box prompts instead of clicks.
        box_noise_fraction, box_noise_max: see :func:`jitter_boxes`.
    """

    def __init__(
        self,
        keys: KeysCollection = "label",
        target_key: str = "target",
        coords_key: str = "prompt_coords",
        labels_key: str = "prompt_labels",
        class_key: str = "prompt_class",
        classes: Sequence[int] | None = None,
        num_positive: int = 1,
        num_negative: int = 0,
        num_points: int | None = None,
        box_prob: float = 0.5,
        box_noise_fraction: float = 0.1,
        box_noise_max: float = 5.0,
    ) -> None:
        MapTransform.__init__(self, keys)
        if len(self.keys) != 1:
            raise ValueError(f"RandPromptsd takes one label key, got {self.keys}")
        if num_positive < 0 or num_negative < 0 or num_positive + num_negative == 0 and box_prob < 1:
            raise ValueError(
                f"num_positive={num_positive}, num_negative={num_negative}: need at least one click per slice "
                "unless box_prob=1"
            )
        self.num_points = num_positive + num_negative if num_points is None else num_points
        if self.num_points < num_positive + num_negative:
            raise ValueError(f"num_points={num_points} < num_positive + num_negative = {num_positive + num_negative}")
        if not 0 <= box_prob <= 1:
            raise ValueError(f"box_prob must be in [0, 1], got {box_prob}")
        if box_noise_fraction < 0 or box_noise_max < 0:
            raise ValueError(f"box noise must be >= 0, got fraction {box_noise_fraction}, max {box_noise_max}")
        if classes is not None and (not classes or min(classes) < 1):
            raise ValueError(f"classes must be a non-empty list of class values >= 1, got {classes}")
        self.target_key, self.coords_key, self.labels_key, self.class_key = (
            target_key,
            coords_key,
            labels_key,
            class_key,
        )
        self.classes = None if classes is None else [int(c) for c in classes]
        self.num_positive, self.num_negative, self.box_prob = num_positive, num_negative, box_prob
        self.box_noise_fraction, self.box_noise_max = box_noise_fraction, box_noise_max
        self._class, self._box = 0, False

    def randomize(self, label: torch.Tensor) -> None:
        present = [int(v) for v in torch.unique(torch.as_tensor(label).as_subclass(torch.Tensor)).tolist() if v > 0]
        if self.classes is not None:
            present = [c for c in self.classes if c in present]
        self._class = int(self.R.choice(present)) if present else 0
        self._box = bool(self.R.random_sample() < self.box_prob)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        key = self.keys[0]
        label = d[key]
        if label.ndim != 4 or label.shape[0] != 1:
            raise ValueError(f"RandPromptsd: {key!r} must be (1, H, W, D), got shape {tuple(label.shape)}")
        self.randomize(label)
        mask = (label == self._class) if self._class else torch.zeros_like(label, dtype=torch.bool)
        depth = label.shape[-1]
        if not self._class:
            coords, labels = empty_slice_prompts(depth, self.num_points)
        elif self._box:
            boxes, present = tight_boxes(mask)
            boxes = jitter_boxes(boxes, label.shape[1:3], self.R, self.box_noise_fraction, self.box_noise_max)
            coords, labels = pack_slice_prompts(
                torch.zeros(depth, 0, 2), torch.zeros(depth, 0, dtype=torch.int64), boxes, present, self.num_points
            )
        else:
            present = mask[0].any(dim=0).any(dim=0)
            pos, pos_ok = random_voxels(mask, self.num_positive, self.R)
            neg, neg_ok = random_voxels(~mask.as_subclass(torch.Tensor), self.num_negative, self.R)
            click_labels = torch.cat([torch.where(pos_ok, 1, -1), torch.where(neg_ok & present[:, None], 0, -1)], 1)
            coords, labels = pack_slice_prompts(torch.cat([pos, neg], 1), click_labels, None, None, self.num_points)
        d[self.target_key] = mask.float()
        d[self.coords_key], d[self.labels_key], d[self.class_key] = coords, labels, self._class
        return d


def error_region_clicks(
    pred: torch.Tensor, target: torch.Tensor, mode: str = "center", rng: np.random.RandomState | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The next click on every slice from a prediction's errors (iterative training and refinement).

    On each slice the larger of the two error regions (false negatives ``target & ~pred``, false positives
    ``pred & ~target``; counted in voxels, ties to false negatives) gets the click: positive (1) for false negatives,
    negative (0) for false positives. ``mode="center"`` clicks the region's voxel farthest from its border
    (Euclidean distance transform; the slice's edge counts as border; ties to the first voxel in ``(i, j)`` order),
    ``mode="random"`` a uniformly random voxel of it. A slice without errors gets label -1.

    Args:
        pred: ``(..., H, W, D)`` binary prediction (nonzero = structure).
        target: the same shape, the true structure.
        mode: ``"center"`` or ``"random"``.
        rng: the random state for ``"random"``.

    Returns:
        ``coords`` float32 ``(..., D, 1, 2)`` ``(i, j)`` and ``labels`` int64 ``(..., D, 1)``, to append to
        ``prompt_coords``/``prompt_labels`` along the prompt dim (``torch.cat(..., dim=-2)`` / ``dim=-1``).
    """
    if mode not in ("center", "random"):
        raise ValueError(f"mode must be 'center' or 'random', got {mode!r}")
    if mode == "random" and rng is None:
        raise ValueError("mode='random' needs rng (a numpy RandomState)")
    pred, target = (
        torch.as_tensor(pred).as_subclass(torch.Tensor) > 0,
        torch.as_tensor(target).as_subclass(torch.Tensor) > 0,
    )
    if pred.shape != target.shape or pred.ndim < 3:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must both be (..., H, W, D)")
    *lead, height, width, depth = pred.shape
    fn, fp = (target & ~pred).reshape(-1, height, width, depth), (pred & ~target).reshape(-1, height, width, depth)
    positive = fn.sum(dim=(1, 2)) >= fp.sum(dim=(1, 2))  # (N, D)
    region = torch.where(positive[:, None, None, :], fn, fp)
    if mode == "center":
        # One call for all slices: zero-padded in-plane, and a slice spacing larger than any in-plane distance.
        padded = np.pad(region.numpy(), ((0, 0), (1, 1), (1, 1), (0, 0)))
        big = float(height + width + 2)
        score = torch.as_tensor(distance_transform_edt(padded, sampling=(big, 1.0, 1.0, big))[:, 1:-1, 1:-1])
    else:
        score = torch.as_tensor(rng.random_sample(tuple(region.shape))) * region + region  # region voxels in (1, 2)
    flat = score.float().permute(0, 3, 1, 2).reshape(*positive.shape, -1)  # (N, D, H * W)
    best = flat.argmax(dim=-1)
    has_error = flat.amax(dim=-1) > 0
    coords = torch.stack([best // width, best % width], dim=-1).float() * has_error[..., None]
    labels = torch.where(has_error, positive.long(), -1)
    return coords.reshape(*lead, depth, 1, 2), labels.reshape(*lead, depth, 1)
