# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose

from masksam.transforms import intensity_transform, load_transforms


@pytest.fixture
def case(tmp_path: Path) -> dict[str, str]:
    affine = np.diag([0.7, 0.8, 2.5, 1.0])
    image = np.linspace(-300, 400, 10 * 12 * 6, dtype=np.float32).reshape(10, 12, 6)
    label = np.zeros((10, 12, 6), dtype=np.uint8)
    label[2:5, 3:7, 1:4] = 1
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "image.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), tmp_path / "label.nii.gz")
    return {"image": str(tmp_path / "image.nii.gz"), "label": str(tmp_path / "label.nii.gz")}


def test_spacing_resamples_and_none_keeps_each_images_grid(case: dict[str, str]) -> None:
    resampled = Compose(load_transforms(spacing=(1.4, 1.6, 5.0), num_classes=2))(case)
    assert resampled["image"].shape == (1, 5, 7, 4)  # MONAI: extent (n - 1) * old / new + 1, rounded
    torch.testing.assert_close(resampled["image"].pixdim, torch.tensor([1.4, 1.6, 5.0], dtype=torch.float64))
    native = Compose(load_transforms(spacing=None, num_classes=2))(case)
    assert native["image"].shape == native["label"].shape == (1, 10, 12, 6)
    torch.testing.assert_close(native["image"].pixdim, torch.tensor([0.7, 0.8, 2.5], dtype=torch.float64))
    assert native["label"].sum() == 3 * 4 * 3


def test_ct_window_scales_to_unit_range(case: dict[str, str]) -> None:
    out = Compose(load_transforms(spacing=None, ct_window=(-200.0, 250.0), num_classes=2))(case)["image"]
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0
    raw = np.asarray(nib.load(case["image"]).dataobj)
    inside = (raw > -200) & (raw < 250)
    np.testing.assert_allclose(out[0].numpy()[inside], (raw[inside] + 200) / 450, atol=1e-5)


def test_unknown_modality_is_named() -> None:
    with pytest.raises(ValueError, match="unknown modality 'pet'"):
        intensity_transform("pet")
