# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""``check_volumes`` directly, on in-memory volumes: message details the file-based tests do not reach."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from masksam.transforms import Problem, Volume, check_volumes, checks, format_problems


def _volume(data: np.ndarray, name: str = "case.nii.gz", affine: np.ndarray | None = None) -> Volume:
    return Volume(name, data.shape, np.eye(4) if affine is None else affine, data)


def test_many_bad_values_are_listed_briefly() -> None:
    label = np.arange(40, dtype=np.int16).reshape(1, 2, 4, 5)
    (problem,) = check_volumes({"label": _volume(label)}, num_classes=5)
    assert problem.message.startswith("label values [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, ... (35 distinct values)]")
    assert "(35 voxels)" in problem.message


def test_values_are_counted_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checks, "_CHUNK", 7)  # many chunks on a tiny volume
    label = np.zeros((1, 4, 5, 3), np.float32)
    label[0, 0, 0, 0], label[0, 3, 4, 2], label[0, 1, 1, 1] = 9, 9, np.nan
    problems = check_volumes({"label": _volume(label)}, num_classes=3)
    assert [p.message.split(" among")[0] for p in problems][0] == "values must be finite, found 1 NaN and 0 Inf"
    assert problems[1].message.startswith("label values [9] are outside [0, 3) for num_classes=3 (2 voxels)")


def test_unreadable_data_is_a_problem() -> None:
    def read() -> np.ndarray:
        raise EOFError("Compressed file ended before the end-of-stream marker was reached")

    vol = Volume("img.nii.gz", (1, 4, 4, 4), np.eye(4), read)
    (problem,) = check_volumes({"image": vol})
    assert str(problem) == (
        "img.nii.gz [image]: cannot read the data: EOFError: Compressed file ended before the end-of-stream marker "
        "was reached"
    )


def test_single_slice_volume_warns() -> None:
    (problem,) = check_volumes({"image": _volume(np.zeros((1, 6, 6, 1), np.float32))})
    assert problem.severity == "warning" and "single slice along axis [2]" in problem.message


def test_volume_from_meta_tensor() -> None:
    affine = torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0]))
    tensor = MetaTensor(torch.zeros(1, 3, 3, 3), affine=affine, meta={"filename_or_obj": "/d/a.nii.gz"})
    vol = Volume.from_loaded(tensor)
    assert vol.file == "/d/a.nii.gz" and vol.shape == (1, 3, 3, 3)
    np.testing.assert_allclose(vol.affine, affine.numpy())


def test_format_problems() -> None:
    one = Problem("a.nii.gz", "image", "bad")
    assert format_problems([one]) == "a.nii.gz [image]: bad"
    assert format_problems([one, one]) == "2 problems:\n  a.nii.gz [image]: bad\n  a.nii.gz [image]: bad"
