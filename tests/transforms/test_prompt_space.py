# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import (
    CenterSpatialCropd,
    Compose,
    EnsureChannelFirstd,
    LoadImaged,
    Orientationd,
    Resized,
    Spacingd,
    SpatialPadd,
)

from masksam.transforms import (
    LoadPromptsd,
    PromptError,
    PromptsToVoxeld,
    PromptsToWorldd,
    SlicePromptsd,
    box_corners,
    slice_prompts,
)

SHAPE = (30, 22, 10)
SIZE = 32  # the network's square input S
# Points inside structures 1, 2 and 3 (not on their borders), and the box around structure 1.
POINTS = [[7, 5, 3], [22, 15, 7], [7, 16, 2]]
BOX = [4, 3, 2, 11, 8, 5]


def write_case(tmp_path: Path) -> dict[str, str]:
    """A labelled volume whose array axes are permuted and flipped against RAS, rotated 10 deg, spacing anisotropic."""
    label = np.zeros(SHAPE, np.uint8)
    label[4:12, 3:9, 2:6] = 1
    label[18:27, 12:20, 5:9] = 2
    label[5:10, 14:20, 1:4] = 3
    theta = np.deg2rad(10)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]
    permute = np.zeros((4, 4))
    permute[0, 1], permute[1, 2], permute[2, 0], permute[3, 3] = -1, 1, 1, 1
    affine = rotation @ permute @ np.diag([0.8, 1.3, 3.0, 1.0])
    affine[:3, 3] = [20, -5, 7]
    nib.save(nib.Nifti1Image(label.astype(np.float32), affine), tmp_path / "image.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), tmp_path / "label.nii.gz")
    (tmp_path / "prompts.json").write_text(json.dumps({"points": POINTS, "point_labels": [1, 1, 0], "boxes": [BOX]}))
    return {k: str(tmp_path / f"{k}.nii.gz") for k in ("image", "label")} | {"prompts": str(tmp_path / "prompts.json")}


def pipeline(crop: bool = False) -> Compose:
    keys = ["image", "label"]
    return Compose(
        [
            LoadImaged(keys),
            EnsureChannelFirstd(keys),
            LoadPromptsd("prompts"),
            PromptsToWorldd("prompts"),
            Orientationd(keys, "RAS", labels=None),
            Spacingd(keys, (1.0, 1.0, 1.5), mode=("bilinear", "nearest")),
            Resized(keys, SIZE, size_mode="longest", mode=("trilinear", "nearest")),
            SpatialPadd(keys, (SIZE, SIZE, -1)),
            *([CenterSpatialCropd(keys, (SIZE, 12, -1))] if crop else []),
            PromptsToVoxeld("prompts"),
        ]
    )


def test_prompts_map_to_the_same_structure_in_model_space_and_back(tmp_path: Path) -> None:
    case = write_case(tmp_path)
    out = pipeline()(case)
    image, label, prompts = out["image"], out["label"][0], out["prompts"]
    assert image.shape[1:3] == (SIZE, SIZE)
    index = torch.floor(prompts["points"] + 0.5).long()
    assert label[index[:, 0], index[:, 1], index[:, 2]].tolist() == [1, 2, 3], "each click on its structure"
    box = prompts["boxes"][0]
    lo, hi = torch.floor(box[:3] + 0.5).long(), torch.floor(box[3:] + 0.5).long()
    inside = label[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1]
    assert (inside == 1).sum() > 0.5 * (label == 1).sum(), "the mapped box encloses most of its structure"
    # Back: model voxel -> world through the current affine -> the loaded grid through the loaded affine.
    loaded = nib.load(case["label"]).affine
    world = out["image"].affine.double() @ torch.cat([prompts["points"].double(), torch.ones(3, 1)], 1).T
    back = (torch.as_tensor(np.linalg.inv(loaded)) @ world).T[:, :3]
    torch.testing.assert_close(back, torch.tensor(POINTS, dtype=torch.float64), atol=1e-3, rtol=0)
    sliced = SlicePromptsd("prompts", num_points=2)(out)
    assert "prompts" not in sliced and sliced["prompt_coords"].shape == (image.shape[-1], 4, 2)
    assert index[0, 2] == index[2, 2] and sliced["prompt_labels"][index[0, 2]].tolist() == [1, 0, 2, 3]


def test_a_prompt_cropped_away_names_the_file_and_key(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="PromptsToVoxeld") as info:  # MONAI's Compose names the transform
        pipeline(crop=True)(write_case(tmp_path))
    assert isinstance(info.value.__cause__, PromptError)
    message = r"image\.nii\.gz \[prompts\]: points\[1\] maps to voxel .* outside the transformed image of shape"
    assert re.search(message, str(info.value.__cause__)), info.value.__cause__


def test_world_and_voxel_transforms_check_their_input() -> None:
    image = MetaTensor(torch.zeros(1, 4, 4, 4), meta={"filename_or_obj": "case.nii.gz"})
    with pytest.raises(PromptError, match=r"case\.nii\.gz \[prompts\]: PromptsToWorldd expects the voxel prompts"):
        PromptsToWorldd("prompts")({"image": image, "prompts": "prompts.json"})
    with pytest.raises(PromptError, match=r"case\.nii\.gz \[prompts\]: PromptsToVoxeld expects the world prompts"):
        PromptsToVoxeld("prompts")({"image": image, "prompts": {"points": torch.zeros(0, 3), "boxes": []}})
    with pytest.raises(PromptError, match=r"case\.nii\.gz \[prompts\]: SlicePromptsd expects voxel prompts"):
        SlicePromptsd("prompts")({"image": image, "prompts": {"space": "world", "boxes": []}})


def test_box_corners_are_all_eight() -> None:
    corners = box_corners(torch.tensor([[0.0, 10, 20, 1, 11, 21]]))[0]
    assert {tuple(c) for c in corners.tolist()} == {(x, y, z) for x in (0, 1) for y in (10, 11) for z in (20, 21)}


def test_slice_prompts_puts_points_on_their_slice_and_boxes_on_every_slice_they_span() -> None:
    points = torch.tensor([[3.0, 4, 1.4], [5, 6, 1.6], [7, 8, 2.0]])
    boxes = torch.tensor([[1.0, 2, 2, 5, 6, 4], [0, 0, 6, 3, 3, 6]])  # a 3D box over slices 2-4, a 2D box on 6
    coords, labels = slice_prompts(points, torch.tensor([1, 0, 1]), boxes, depth=8, num_points=2)
    assert coords.shape == (8, 4, 2) and coords.dtype == torch.float32 and labels.dtype == torch.int64
    assert labels.tolist() == [
        [-1, -1, -1, -1],
        [1, -1, -1, -1],
        [0, 1, 2, 3],
        [-1, -1, 2, 3],
        [-1, -1, 2, 3],
        [-1, -1, -1, -1],
        [-1, -1, 2, 3],
        [-1, -1, -1, -1],
    ]
    assert coords[1, 0].tolist() == [3, 4] and coords[2, :2].tolist() == [[5, 6], [7, 8]]
    assert coords[3, 2:].tolist() == [[1, 2], [5, 6]] and coords[6, 2:].tolist() == [[0, 0], [3, 3]]


@pytest.mark.parametrize(
    ("points", "labels", "boxes", "message"),
    [
        ([], [], [], r"case \[prompts\]: empty: no point and no box"),
        (
            [[1, 1, 1], [2, 2, 1.2], [3, 3, 0.8]],
            [1, 1, 0],
            [],
            r"slice 1 has more than num_points=2 clicks.*points\[2\]",
        ),
        ([], [], [[0, 0, 1, 2, 2, 3], [0, 0, 3, 1, 1, 3]], r"boxes\[0\] and boxes\[1\] are both on slice 3"),
        ([[1, 1, 4.6]], [1], [], r"points\[0\] is on slice 5, outside the image's 5 slices"),
        ([], [], [[0, 0, -0.7, 1, 1, 2]], r"boxes\[0\] spans slices -1\.\.2, outside the image's 5 slices"),
        ([[1, 1, 1]], [1, 0], [], r"2 point labels for 1 points"),
        ([[1, 1], [2, 2], [3, 3]], [1, 1], [], r"points must be \(P, 3\), got shape \(3, 2\)"),
        ([], [], [[0, 0, 1, 2, 2, 3, 4]], r"boxes must be \(B, 6\), got shape \(1, 7\)"),
        ([[1, 1, 1]], [2], [], r"point labels must be 1 \(foreground\) or 0 \(background\), got \[2\]"),
    ],
)
def test_slice_prompts_errors(points: Any, labels: Any, boxes: Any, message: str) -> None:
    with pytest.raises(PromptError, match=message):
        slice_prompts(torch.tensor(points), torch.tensor(labels), torch.tensor(boxes), 5, 2, source="case [prompts]")


def test_a_file_of_several_structures_gives_stacked_per_slice_prompts(tmp_path: Path) -> None:
    case = write_case(tmp_path)
    structures = [
        {"boxes": [BOX], "label": 1},
        {"points": [POINTS[1]], "point_labels": [1], "label": 2},
    ]
    Path(case["prompts"]).write_text(json.dumps(structures))
    out = Compose([pipeline(), SlicePromptsd("prompts", num_points=2)])(case)
    depth = out["image"].shape[-1]
    assert out["prompt_coords"].shape == (2, depth, 4, 2) and out["prompt_labels"].shape == (2, depth, 4)
    assert out["prompt_structures"] == [1, 2]
    box_slices = (out["prompt_labels"][0] == 2).any(1)
    click_slices = (out["prompt_labels"][1] == 1).any(1)
    assert box_slices.sum() >= 2 and click_slices.sum() == 1 and not (out["prompt_labels"][1] >= 2).any()
    for m, value in enumerate((1, 2)):  # each structure's prompts land on its own structure
        prompted = torch.nonzero((out["prompt_labels"][m] >= 1).any(1)).flatten()
        d = int(prompted[len(prompted) // 2])  # the middle one: a rotated box's end slices may miss the structure
        used = out["prompt_labels"][m, d] >= 1  # the click, or the box's two corners: their centre
        i, j = out["prompt_coords"][m, d][used].mean(0).round().long().tolist()
        assert out["label"][0, i, j, d] == value
    clash = [{"boxes": [BOX], "label": 2}, {"points": [POINTS[1]], "point_labels": [1]}]  # the second defaults to 2
    Path(case["prompts"]).write_text(json.dumps(clash))
    with pytest.raises(PromptError, match=r"structures \[0, 1\] would all be written as label 2"):
        SlicePromptsd("prompts", num_points=2)(pipeline()(case))
    structures[1]["points"] = [[99, 0, 0]]
    Path(case["prompts"]).write_text(json.dumps(structures))
    loaded = Compose(pipeline().transforms[:2])(case)  # MONAI's Compose would wrap the error: call the transform
    with pytest.raises(PromptError, match=re.escape("prompts.json[1]: $.points[0]")):
        LoadPromptsd("prompts")(loaded)
    Path(case["prompts"]).write_text("[]")
    with pytest.raises(PromptError, match="empty"):
        LoadPromptsd("prompts")(loaded)
