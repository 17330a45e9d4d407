# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from masksam.transforms import PROMPT_PROTOCOLS, PromptProtocold, shifted_boxes


def make_label(name: str = "/data/case_001.nii.gz") -> MetaTensor:
    """(1, 48, 40, 7): class 3 on slices 1-5 (one voxel on slice 5), class 1 elsewhere; slices 0 and 6 without 3."""
    label = torch.zeros(1, 48, 40, 7)
    label[0, 10:30, 8:20, 1:5] = 3
    label[0, 20, 30, 5] = 3
    label[0, 35:40, 30:35, :] = 1
    return MetaTensor(label, meta={"filename_or_obj": name})


def extent_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of boxes (i0, j0, i1, j1) as voxel extents [i0, i1 + 1) x [j0, j1 + 1)."""
    lo, hi = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:]) + 1
    inter = (hi - lo).clamp(min=0).prod(1)
    area = lambda x: (x[:, 2:] - x[:, :2] + 1).prod(1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def test_registry_names() -> None:
    assert set(PROMPT_PROTOCOLS) == {"1 click", "3 clicks", "box", "box, jitter 0.5", "box, jitter 0.75"}


@pytest.mark.parametrize(("protocol", "clicks"), [("1 click", 1), ("3 clicks", 3)])
def test_click_protocols_put_positive_clicks_on_the_structure(protocol: str, clicks: int) -> None:
    label = make_label()
    out = PromptProtocold("label", protocol, class_value=3)({"label": label})
    coords, labels = out["prompt_coords"], out["prompt_labels"]
    assert out["prompt_protocol"] == protocol and coords.shape == (7, clicks + 2, 2)
    assert torch.equal(out["target"], (label == 3).float())
    assert (labels >= 0).sum(1).tolist() == [0] + [clicks] * 4 + [1, 0], "one voxel on slice 5, none on 0 and 6"
    assert set(labels.unique().tolist()) == {-1, 1}
    for d, p in torch.nonzero(labels == 1).tolist():
        i, j = coords[d, p].long().tolist()
        assert label[0, i, j, d] == 3
    if clicks == 3:
        assert len({tuple(c) for c in coords[2, :3].tolist()}) == 3, "distinct clicks"


def test_protocols_are_reproducible_per_case_and_differ_between_cases() -> None:
    for protocol in PROMPT_PROTOCOLS:
        runs = [PromptProtocold("label", protocol, class_value=3, seed=7)({"label": make_label()}) for _ in range(2)]
        assert torch.equal(runs[0]["prompt_coords"], runs[1]["prompt_coords"]), protocol
        assert torch.equal(runs[0]["prompt_labels"], runs[1]["prompt_labels"]), protocol
    transform = PromptProtocold("label", "3 clicks", class_value=3, seed=7)
    a, b = (transform({"label": make_label(n)})["prompt_coords"] for n in ("/data/a.nii.gz", "/data/b.nii.gz"))
    assert not torch.equal(a, b)
    other_seed = PromptProtocold("label", "3 clicks", class_value=3, seed=8)({"label": make_label("/data/a.nii.gz")})
    assert not torch.equal(a, other_seed["prompt_coords"])


@pytest.mark.parametrize("iou", [0.5, 0.75])
def test_jittered_boxes_have_the_promised_iou(iou: float) -> None:
    out = PromptProtocold("label", f"box, jitter {iou}", class_value=3, seed=1)({"label": make_label()})
    labels, coords = out["prompt_labels"], out["prompt_coords"]
    assert labels.tolist() == [[-1, -1]] + [[2, 3]] * 5 + [[-1, -1]]
    boxes = coords[1:6].reshape(5, 4)
    tight = torch.tensor([[10.0, 8, 29, 19]] * 4 + [[20.0, 30, 20, 30]])
    torch.testing.assert_close(extent_iou(boxes, tight), torch.full((5,), iou), atol=1e-5, rtol=0)
    exact = PromptProtocold("label", "box", class_value=3)({"label": make_label()})["prompt_coords"][1:6]
    assert torch.equal(exact.reshape(5, 4), tight)


def test_shifted_boxes_over_many_draws_and_at_the_border() -> None:
    rng = np.random.RandomState(0)
    boxes = torch.tensor([[0.0, 5, 9, 30], [50, 60, 63, 63], [3, 3, 3, 3]]).repeat(100, 1)
    moved = shifted_boxes(boxes, (64, 64), 0.6, rng)
    torch.testing.assert_close(extent_iou(moved, boxes), torch.full((300,), 0.6), atol=1e-5, rtol=0)
    assert moved.min() >= 0 and moved.max() <= 63, "shifted inward where only one side has room"
    assert len({tuple(b) for b in moved[0::3].tolist()}) > 50, "random shifts"
    with pytest.raises(ValueError, match=r"iou must be in \(0, 1\], got 0"):
        shifted_boxes(boxes, (64, 64), 0.0, rng)


def test_binary_label_padding_and_errors() -> None:
    out = PromptProtocold("label", "box", num_points=3)({"label": make_label()})
    assert torch.equal(out["target"], (make_label() > 0).float())
    assert out["prompt_labels"].shape == (7, 5) and out["prompt_labels"][0].tolist() == [-1, -1, -1, 2, 3]
    absent = PromptProtocold("label", "1 click", class_value=2)({"label": make_label()})
    assert not absent["target"].any() and (absent["prompt_labels"] == -1).all()
    with pytest.raises(ValueError, match=r"unknown prompt protocol '2 clicks'; choose one of \['1 click'"):
        PromptProtocold("label", "2 clicks")
    with pytest.raises(ValueError, match=r"class_value must be >= 1 .* got 0"):
        PromptProtocold("label", "box", class_value=0)
    with pytest.raises(ValueError, match=r"'label' must be \(1, H, W, D\)"):
        PromptProtocold("label", "box")({"label": make_label()[0]})


def test_several_classes_are_stacked_as_structures() -> None:
    label = make_label()
    both = PromptProtocold("label", "3 clicks", class_value=[3, 2, 1], seed=7)({"label": label})
    assert both["prompt_coords"].shape == (3, 7, 5, 2) and both["prompt_labels"].shape == (3, 7, 5)
    assert torch.equal(both["target"], torch.cat([(label == v).float() for v in (3, 2, 1)]))
    for m, value in enumerate((3, 2, 1)):  # each structure exactly as prompted alone
        alone = PromptProtocold("label", "3 clicks", class_value=value, seed=7)({"label": label})
        assert torch.equal(both["prompt_coords"][m], alone["prompt_coords"])
        assert torch.equal(both["prompt_labels"][m], alone["prompt_labels"])
    assert (both["prompt_labels"][1] == -1).all()  # class 2 is absent: no prompt
    with pytest.raises(ValueError, match="class_value must be"):
        PromptProtocold("label", "box", class_value=[])
