# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from monai.data import MetaTensor, list_data_collate

from masksam.transforms import RandPromptsd, error_region_clicks, jitter_boxes, random_voxels, tight_boxes


def make_label() -> torch.Tensor:
    """(1, 24, 20, 6): class 1 on slices 1-3, class 2 on slices 3-4 (a 2-voxel sliver on slice 4), slice 0 and 5 empty."""
    label = torch.zeros(1, 24, 20, 6)
    label[0, 3:10, 4:15, 1:4] = 1
    label[0, 12:20, 2:8, 3] = 2
    label[0, 15, 5:7, 4] = 2
    return label


def test_tight_boxes_per_slice() -> None:
    boxes, present = tight_boxes(make_label() == 2)
    assert present.tolist() == [False, False, False, True, True, False]
    assert boxes[3].tolist() == [12, 2, 19, 7] and boxes[4].tolist() == [15, 5, 15, 6]
    assert boxes[0].tolist() == [0, 0, 0, 0]


def test_random_voxels_are_distinct_voxels_of_the_mask() -> None:
    mask = make_label()[0] == 2
    coords, valid = random_voxels(mask, 3, np.random.RandomState(0))
    assert coords.shape == (6, 3, 2) and valid.sum(1).tolist() == [0, 0, 0, 3, 2, 0]  # the sliver has 2 voxels
    for d, k in torch.nonzero(valid).tolist():
        assert mask[int(coords[d, k, 0]), int(coords[d, k, 1]), d]
    assert {tuple(c) for c in coords[4, valid[4]].tolist()} == {(15, 5), (15, 6)}
    again, _ = random_voxels(mask, 3, np.random.RandomState(0))
    other, _ = random_voxels(mask, 3, np.random.RandomState(1))
    assert torch.equal(coords, again) and not torch.equal(coords[3], other[3])


def test_jitter_boxes_stay_within_the_noise_limit_and_the_slice() -> None:
    boxes = torch.tensor([[2.0, 2, 40, 50], [0, 0, 3, 3]]).repeat(200, 1)
    moved = jitter_boxes(boxes, (64, 64), np.random.RandomState(0), fraction=0.1, max_px=5.0)
    shift = (moved - boxes).abs()
    assert shift[0::2].max() <= 5.0 and shift[0::2].max() > 3.0, "std 4.1 px (0.1 x 41), clipped at 5 px"
    assert shift[1::2].max() <= 2.0, "std 0.4 px (0.1 x 4)"
    assert moved.min() >= 0 and moved.max() <= 63 and (moved[:, 2:] >= moved[:, :2]).all()


def run(label: torch.Tensor, seed: int = 0, **kwargs: Any) -> dict[str, Any]:
    transform = RandPromptsd("label", **kwargs)
    transform.set_random_state(seed)
    return transform({"label": MetaTensor(label)})


def test_clicks_fall_on_the_structure_and_only_on_its_slices() -> None:
    label = make_label()
    for seed in range(6):
        out = run(label, seed, num_positive=2, num_negative=1, num_points=4, box_prob=0.0)
        c = out["prompt_class"]
        coords, labels = out["prompt_coords"], out["prompt_labels"]
        assert coords.shape == (6, 6, 2) and labels.shape == (6, 6)
        assert torch.equal(out["target"], (label == c).float())
        present = (label[0] == c).any(0).any(0)
        assert (labels[~present] == -1).all() and (labels[present, 0] == 1).all()
        assert (labels[:, 4:] == -1).all(), "no box slots used with clicks"
        for d, p in torch.nonzero(labels >= 0).tolist():
            i, j = coords[d, p].long().tolist()
            assert (label[0, i, j, d] == c) == bool(labels[d, p] == 1), f"click {labels[d, p]} at {(i, j, d)}"
    assert {run(label, s, box_prob=0.0)["prompt_class"] for s in range(10)} == {1, 2}


def test_boxes_are_near_the_tight_box_on_the_structures_slices() -> None:
    label = make_label()
    out = run(label, 0, classes=[1], box_prob=1.0, num_positive=0, box_noise_max=2.0)
    assert out["prompt_class"] == 1 and out["prompt_labels"].shape == (6, 2)
    labels = out["prompt_labels"]
    assert labels.tolist() == [[-1, -1]] + [[2, 3]] * 3 + [[-1, -1]] * 2
    tight = torch.tensor([[3.0, 4], [9, 14]])
    assert ((out["prompt_coords"][1:4] - tight).abs() <= 2.0).all()
    assert not torch.equal(out["prompt_coords"][1], tight), "jittered"


def test_seeded_and_empty_and_class_choice() -> None:
    label = make_label()
    first, again = run(label, 3, num_positive=3), run(label, 3, num_positive=3)
    assert all(torch.equal(first[k], again[k]) for k in ("prompt_coords", "prompt_labels", "target"))
    empty = run(label, 0, classes=[5])
    assert empty["prompt_class"] == 0 and not empty["target"].any() and (empty["prompt_labels"] == -1).all()
    assert all(run(label, s, classes=[2])["prompt_class"] == 2 for s in range(5))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_positive": 0}, r"need at least one click per slice unless box_prob=1"),
        ({"num_positive": 2, "num_points": 1}, r"num_points=1 < num_positive \+ num_negative = 2"),
        ({"box_prob": 1.5}, r"box_prob must be in \[0, 1\], got 1\.5"),
        ({"classes": [0, 1]}, r"classes must be .* >= 1, got \[0, 1\]"),
        ({"box_noise_max": -1}, r"box noise must be >= 0"),
    ],
)
def test_bad_settings(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RandPromptsd("label", **kwargs)
    with pytest.raises(ValueError, match=r"'label' must be \(1, H, W, D\), got shape \(24, 20, 6\)"):
        RandPromptsd("label")({"label": make_label()[0]})


def test_error_region_clicks_pick_the_larger_error_with_its_sign() -> None:
    target = torch.zeros(2, 15, 15, 3, dtype=torch.bool)
    pred = torch.zeros_like(target)
    target[0, 2:9, 2:9, 0] = True  # slice 0: 7x7 missed (false negative) ...
    pred[0, 10:12, 10:12, 0] = True  # ... and a 2x2 false positive
    pred[0, 4:13, 1:6, 1] = True  # slice 1: a 9x5 false positive ...
    target[0, 0, 0:3, 1] = True  # ... and 3 missed voxels
    target[0, :, :, 2] = pred[0, :, :, 2] = True  # slice 2: right
    target[1, 0:9, 0:3, 0] = True  # case 1, slice 0: a 9x3 miss in the corner
    coords, labels = error_region_clicks(pred, target)
    assert coords.shape == (2, 3, 1, 2) and labels.shape == (2, 3, 1)
    assert labels[0, :, 0].tolist() == [1, 0, -1] and labels[1, :, 0].tolist() == [1, -1, -1]
    assert coords[0, 0, 0].tolist() == [5, 5] and coords[0, 1, 0].tolist() == [6, 3], "centres (first of ties)"
    assert coords[1, 0, 0].tolist() == [1, 1], "the slice's edge counts as border (else (0, 0) would be farthest)"
    for seed in range(5):
        rc, rl = error_region_clicks(pred[0], target[0], mode="random", rng=np.random.RandomState(seed))
        assert rl[:, 0].tolist() == [1, 0, -1]
        (i0, j0), (i1, j1) = rc[0, 0].long().tolist(), rc[1, 0].long().tolist()
        assert target[0, i0, j0, 0] and not pred[0, i0, j0, 0], "a missed voxel"
        assert pred[0, i1, j1, 1] and not target[0, i1, j1, 1], "a false-positive voxel"
    with pytest.raises(ValueError, match="mode='random' needs rng"):
        error_region_clicks(pred, target, mode="random")
    with pytest.raises(ValueError, match=r"pred \(2, 15, 15, 3\) and target \(15, 15, 3\) must both be"):
        error_region_clicks(pred, target[0])


def test_simulated_prompts_collate_to_batches() -> None:
    label = make_label()
    items = [run(label, s, num_positive=1, num_negative=1, box_prob=p) for s, p in ((0, 0.0), (1, 1.0))]
    batch = list_data_collate(items)
    assert batch["prompt_coords"].shape == (2, 6, 4, 2) and batch["prompt_labels"].shape == (2, 6, 4)
    assert batch["target"].shape == (2, 1, 24, 20, 6) and batch["prompt_class"].shape == (2,)
