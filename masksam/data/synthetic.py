# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Small synthetic labelled volumes (NIfTI + MSD-style datalist) for tests and smoke runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["make_synthetic_dataset"]


def make_synthetic_dataset(
    out_dir: str | os.PathLike[str],
    num_cases: int = 4,
    shape: tuple[int, int, int] = (40, 36, 12),
    num_classes: int = 3,
    num_folds: int = 2,
    num_test: int = 1,
    spacing: tuple[float, float, float] = (1.0, 1.0, 2.0),
    modality: str = "CT",
    seed: int = 0,
) -> Path:
    """Write ``num_cases`` labelled and ``num_test`` unlabelled volumes with ellipsoid "organs" and a datalist.

    Class k (1..K-1) is an ellipsoid at a case-dependent position; intensities are CT-like (HU) or MRI-like.
    The datalist ``dataset.json`` holds ``training`` items with a ``fold`` key, a ``testing`` list and the
    ``labels``/``modality`` fields Auto3DSeg reads.

    Returns:
        the path of ``dataset.json``.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    affine = np.diag([*spacing, 1.0])
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1).astype(np.float32)
    training, testing = [], []
    for i in range(num_cases + num_test):
        label = np.zeros(shape, dtype=np.uint8)
        for k in range(1, num_classes):
            centre = np.array(shape) * rng.uniform(0.3, 0.7, size=3)
            radii = np.maximum(np.array(shape) * rng.uniform(0.12, 0.22, size=3), 2.0)
            label[(((grid - centre) / radii) ** 2).sum(-1) <= 1.0] = k
        if modality.upper() == "CT":
            image = rng.normal(-100.0, 20.0, shape) + 60.0 * label
        else:
            image = rng.normal(100.0, 10.0, shape) + 40.0 * label
        image_file = f"case_{i:03d}.nii.gz"
        if i < num_cases:
            nib.save(nib.Nifti1Image(image.astype(np.float32), affine), out / "imagesTr" / image_file)
            nib.save(nib.Nifti1Image(label, affine), out / "labelsTr" / image_file)
            training.append(
                {"image": f"imagesTr/{image_file}", "label": f"labelsTr/{image_file}", "fold": i % num_folds}
            )
        else:
            nib.save(nib.Nifti1Image(image.astype(np.float32), affine), out / "imagesTs" / image_file)
            testing.append({"image": f"imagesTs/{image_file}"})
    datalist = {
        "name": "synthetic",
        "description": "synthetic ellipsoids for tests",
        "labels": {str(k): ("background" if k == 0 else f"organ_{k}") for k in range(num_classes)},
        "modality": {"0": modality.upper()},
        "training": training,
        "testing": testing,
    }
    path = out / "dataset.json"
    path.write_text(json.dumps(datalist, indent=2))
    return path
