# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from masksam.transforms import LoadPromptsd, PromptError, read_prompts, validate_prompts

SHAPE = (40, 30, 20)
GOOD = {"points": [[10, 5, 3], [39, 29, 19]], "point_labels": [1, 0], "boxes": [[2, 3, 4, 20, 25, 10]], "label": 2}


def write(tmp_path: Path, data: Any, name: str = "case.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_valid_voxel_prompts(tmp_path: Path) -> None:
    prompts = read_prompts(write(tmp_path, GOOD), spatial_shape=SHAPE)
    torch.testing.assert_close(prompts.points, torch.tensor([[10.0, 5, 3], [39, 29, 19]]))
    assert prompts.point_labels.tolist() == [1, 0] and prompts.label == 2
    torch.testing.assert_close(prompts.boxes, torch.tensor([[2.0, 3, 4, 20, 25, 10]]))
    boxes_only = read_prompts(write(tmp_path, {"boxes": [[0, 0, 0, 1, 1, 1]]}), SHAPE)
    assert boxes_only.points.shape == (0, 3) and boxes_only.point_labels.shape == (0,)


def test_world_prompts_go_through_the_inverse_affine() -> None:
    affine = np.diag([-2.0, 0.5, 3.0, 1.0])  # x flipped: the world box's low x is the high voxel x
    affine[:3, 3] = [80.0, -10.0, 6.0]
    voxels = np.array([[10.0, 5, 3], [20, 25, 10]])
    world = (affine @ np.c_[voxels, np.ones(2)].T).T[:, :3]
    box = [*world.min(0), *world.max(0)]
    data = {"space": "world", "points": [world[0].tolist()], "point_labels": [1], "boxes": [box]}
    prompts = validate_prompts(data, SHAPE, affine)
    torch.testing.assert_close(prompts.points, torch.tensor([[10.0, 5, 3]]))
    torch.testing.assert_close(prompts.boxes, torch.tensor([[10.0, 5, 3, 20, 25, 10]]))
    with pytest.raises(PromptError, match=r"\$\.space: 'world' coordinates need the image's affine"):
        validate_prompts(data, SHAPE)
    with pytest.raises(PromptError, match=r"\$\.boxes\[0\]: corner .* has x1 < x0"):
        validate_prompts({**data, "boxes": [world.ravel().tolist()]}, SHAPE, affine)  # corners as given: unordered


def test_oblique_world_box_gives_the_enclosing_voxel_box() -> None:
    theta = np.deg2rad(30)
    affine = np.eye(4)
    affine[:2, :2] = [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]
    box = [0.0, 0.0, 0.0, 10.0, 10.0, 5.0]  # world mm
    out = validate_prompts({"space": "world", "boxes": [box]}, None, affine).boxes[0]
    corners = np.array([[x, y, z, 1.0] for x in (0, 10) for y in (0, 10) for z in (0, 5)])
    vox = (np.linalg.inv(affine) @ corners.T).T[:, :3]
    torch.testing.assert_close(out, torch.tensor([*vox.min(0), *vox.max(0)], dtype=torch.float32))
    assert out[3] - out[0] > 10.0 + 1e-3, "a rotated box encloses more than its two given corners span"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, r"case\.json: \$: .*is not valid under any of the given schemas"),
        ({"points": [[1, 2]], "point_labels": [1]}, r"\$\.points\[0\]: \[1, 2\] is too short"),
        ({"points": [[1, 2, 3]], "point_labels": [2]}, r"\$\.point_labels\[0\]: 2 is not one of \[0, 1\]"),
        ({"points": [[1, 2, 3]]}, r"\$: 'point_labels' is a dependency of 'points'"),
        ({"points": [[1, 2, 3]], "point_labels": [1, 1]}, r"\$\.point_labels: 2 labels for 1 points"),
        ({"boxes": [[1, 2, 3, 4, 5, "6"]]}, r"\$\.boxes\[0\]\[5\]: '6' is not of type 'number'"),
        ({"boxes": [[1, 2, 3, 4, 5, 6]], "clicks": []}, r"\$: Additional properties are not allowed \('clicks'"),
        ({"boxes": [[1, 2, 3, 4, 5, 6]], "label": 0}, r"\$\.label: 0 is less than the minimum of 1"),
        ({"points": [], "point_labels": []}, r"\$\.point(s|_labels): \[\] (should be non-empty|is too short)"),
        (
            {"boxes": [[0, 9, 0, 5, 2, 1]]},
            r"\$\.boxes\[0\]: corner \(0\.0, 9\.0, 0\.0\) -> \(5\.0, 2\.0, 1\.0\) has y1 < y0",
        ),
        (
            {"points": [[1, 2, 3], [1, 30, 3]], "point_labels": [1, 1]},
            r"\$\.points\[1\]: voxel coordinate \(1\.0, 30\.0, 3\.0\) is outside the image of shape \(40, 30, 20\)",
        ),
        ({"boxes": [[0, 0, 0, 5, 5, 5], [0, 0, -1, 5, 5, 5]]}, r"\$\.boxes\[1\]: voxel coordinate .* is outside"),
    ],
)
def test_bad_prompt_files_name_the_file_and_the_value(tmp_path: Path, data: Any, message: str) -> None:
    path = write(tmp_path, data)
    with pytest.raises(PromptError, match=message) as info:
        read_prompts(path, SHAPE)
    assert str(info.value).startswith(str(path))


def test_unreadable_or_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PromptError, match=r"missing\.json: prompt file not found"):
        read_prompts(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"points": [[1, 2, 3]')
    with pytest.raises(PromptError, match=r"bad\.json: not valid JSON"):
        read_prompts(bad)


def test_load_promptsd_checks_against_the_loaded_image(tmp_path: Path) -> None:
    image = MetaTensor(torch.zeros(1, *SHAPE), affine=torch.eye(4), meta={"filename_or_obj": "/data/case.nii.gz"})
    out = LoadPromptsd("prompts")({"image": image, "prompts": str(write(tmp_path, GOOD))})
    assert out["prompts"]["point_labels"].tolist() == [1, 0] and out["image"] is image
    inline = LoadPromptsd("prompts")({"image": image, "prompts": {"boxes": [[0, 0, 0, 39, 1, 1]]}})
    torch.testing.assert_close(inline["prompts"]["boxes"], torch.tensor([[0.0, 0, 0, 39, 1, 1]]))
    with pytest.raises(PromptError, match=r"^/data/case\.nii\.gz \[prompts\]: \$\.boxes\[0\]: .* outside"):
        LoadPromptsd("prompts")({"image": image, "prompts": {"boxes": [[0, 0, 0, 40, 1, 1]]}})
    small = MetaTensor(torch.zeros(1, 10, 10, 10))
    with pytest.raises(PromptError, match=r"case\.json: \$\.points\[0\]: .* outside the image of shape \(10, 10, 10\)"):
        LoadPromptsd("prompts")({"image": small, "prompts": str(write(tmp_path, GOOD))})
