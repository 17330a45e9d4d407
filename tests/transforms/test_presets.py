# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose

from masksam.transforms import foreground_intensity_stats, intensity_transform, load_transforms


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


def test_ct_zscore_clips_to_the_window_then_standardises(case: dict[str, str]) -> None:
    transforms = load_transforms(
        spacing=None, modality="ct_zscore", ct_window=(-100.0, 300.0), ct_mean_std=(50.0, 80.0)
    )
    out = Compose(transforms)(case)["image"][0].numpy()
    raw = np.asarray(nib.load(case["image"]).dataobj)
    np.testing.assert_allclose(out, (np.clip(raw, -100.0, 300.0) - 50.0) / 80.0, atol=1e-5)


def test_ct_zscore_without_mean_and_std_names_the_setting_and_the_command() -> None:
    for bad in (None, [0.0, 0.0], [1.0]):
        with pytest.raises(ValueError, match="ct_mean_std.*intensity_stats"):
            intensity_transform("ct_zscore", ct_mean_std=bad)


def test_foreground_stats_pool_the_labelled_voxels(tmp_path: Path) -> None:
    items = []
    for i, (lo, hi) in enumerate([(-100.0, 100.0), (200.0, 400.0)]):
        image = np.full((8, 8, 4), -1000.0, dtype=np.float32)  # background far outside the foreground range
        label = np.zeros((8, 8, 4), dtype=np.uint8)
        image[:4] = np.linspace(lo, hi, 4 * 8 * 4, dtype=np.float32).reshape(4, 8, 4)
        label[:4] = 2
        for name, array in (("image", image), ("label", label)):
            nib.save(nib.Nifti1Image(array, np.eye(4)), tmp_path / f"{name}{i}.nii.gz")
        items.append({"image": str(tmp_path / f"image{i}.nii.gz"), "label": str(tmp_path / f"label{i}.nii.gz")})
    stats = foreground_intensity_stats(items, samples_per_case=20000)
    lower, upper = stats["ct_window"]
    mean, std = stats["ct_mean_std"]
    assert -100.0 <= lower < -90.0 and 390.0 < upper <= 400.0  # background (-1000) never sampled
    assert abs(mean - 150.0) < 5.0 and abs(std - np.sqrt(150.0**2 + 200.0**2 / 12)) < 5.0
    assert foreground_intensity_stats(items, samples_per_case=20000) == stats  # seeded
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), dtype=np.uint8), np.eye(4)), tmp_path / "empty.nii.gz")
    with pytest.raises(ValueError, match="no foreground"):
        foreground_intensity_stats([{"image": items[0]["image"], "label": str(tmp_path / "empty.nii.gz")}])
