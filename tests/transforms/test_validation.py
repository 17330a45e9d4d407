# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""``ValidateInputd`` and ``CheckedLoadImaged`` on tiny synthetic NIfTI files: one test per bad-input case."""

from __future__ import annotations

import gzip
import logging
import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import Compose, LoadImaged

from masksam.transforms import CheckedLoadImaged, ValidateInputd

SHAPE = (8, 7, 5)


def _nii(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> str:
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), path)
    return str(path)


def _case(tmp_path: Path, image: np.ndarray | None = None, label: np.ndarray | None = None, **affines) -> dict:
    """Write an image/label pair (defaults: a clean 3-class case) and return the datalist item."""
    rng = np.random.default_rng(0)
    if image is None:
        image = rng.normal(size=SHAPE).astype(np.float32)
    if label is None:
        label = rng.integers(0, 3, size=SHAPE).astype(np.uint8)
    return {
        "image": _nii(tmp_path / "img.nii.gz", image, affines.get("image_affine")),
        "label": _nii(tmp_path / "lbl.nii.gz", label, affines.get("label_affine")),
    }


def _run(item: dict, **kwargs) -> dict:
    kwargs = {"num_classes": 3, "in_channels": 1, **kwargs}
    data = LoadImaged(["image", "label"], ensure_channel_first=True, image_only=True)(item)
    return ValidateInputd(["image", "label"], **kwargs)(data)


def _error(item: dict, **kwargs) -> str:
    with pytest.raises(ValueError) as excinfo:
        _run(item, **kwargs)
    return str(excinfo.value)


def test_clean_case_passes_unchanged(tmp_path: Path) -> None:
    item = _case(tmp_path)
    data = LoadImaged(["image", "label"], ensure_channel_first=True)(item)
    out = ValidateInputd(["image", "label"], num_classes=3, in_channels=1)(data)
    assert out["image"] is data["image"] and out["label"] is data["label"]


def test_small_volume_is_not_an_error(tmp_path: Path) -> None:
    image = np.zeros((3, 2, 2), np.float32)  # far smaller than any crop: the bundle pads it
    _run(_case(tmp_path, image=image, label=np.zeros((3, 2, 2), np.uint8)))


def test_shape_mismatch(tmp_path: Path) -> None:
    msg = _error(_case(tmp_path, label=np.zeros((8, 7, 4), np.uint8)))
    assert msg.startswith(f"{tmp_path / 'lbl.nii.gz'} [label]: ")
    assert "spatial shape (8, 7, 4) differs from the image spatial shape (8, 7, 5)" in msg
    assert str(tmp_path / "img.nii.gz") in msg


def test_affine_mismatch(tmp_path: Path) -> None:
    shifted = np.eye(4)
    shifted[:3, 3] = [2.0, 0.0, 0.0]
    msg = _error(_case(tmp_path, label_affine=shifted))
    assert "lbl.nii.gz [label]: affine differs from the image affine" in msg
    assert "by up to 2 (tolerance 0.001)" in msg and "origin (2, 0, 0) vs (0, 0, 0)" in msg


def test_affine_within_tolerance_passes(tmp_path: Path) -> None:
    nearly = np.eye(4)
    nearly[0, 3] = 1e-5  # float rounding between image and label headers
    _run(_case(tmp_path, label_affine=nearly))


def test_label_value_out_of_range(tmp_path: Path) -> None:
    label = np.zeros(SHAPE, np.uint8)
    label[0, 0, :2] = [3, 7]
    msg = _error(_case(tmp_path, label=label))
    assert "lbl.nii.gz [label]: label values [3, 7] are outside [0, 3) for num_classes=3 (2 voxels)" in msg


def test_negative_label_without_num_classes(tmp_path: Path) -> None:
    label = np.zeros(SHAPE, np.int16)
    label[1, 1, 1] = -1
    assert "label values [-1] are negative" in _error(_case(tmp_path, label=label), num_classes=None)


def test_non_integer_label(tmp_path: Path) -> None:
    label = np.zeros(SHAPE, np.float32)
    label[2, 2, 2], label[3, 3, 3] = 0.5, 1.25
    msg = _error(_case(tmp_path, label=label))
    assert "lbl.nii.gz [label]: label values must be integer class indices" in msg
    assert "found 2 voxels with non-integer values [0.5, 1.25]" in msg


def test_float_label_with_integer_values_passes(tmp_path: Path) -> None:
    _run(_case(tmp_path, label=np.full(SHAPE, 2.0, np.float32)))


def test_nan_image(tmp_path: Path) -> None:
    image = np.zeros(SHAPE, np.float32)
    image[0, 0, :3] = np.nan
    msg = _error(_case(tmp_path, image=image))
    assert msg == f"{tmp_path / 'img.nii.gz'} [image]: values must be finite, found 3 NaN and 0 Inf among 280 voxels"


def test_inf_image(tmp_path: Path) -> None:
    image = np.zeros(SHAPE, np.float32)
    image[1, 1, 1], image[2, 2, 2] = np.inf, -np.inf
    assert "img.nii.gz [image]: values must be finite, found 0 NaN and 2 Inf" in _error(_case(tmp_path, image=image))


def test_nan_allowed_when_check_finite_is_off(tmp_path: Path) -> None:
    image = np.zeros(SHAPE, np.float32)
    image[0, 0, 0] = np.nan
    _run(_case(tmp_path, image=image), check_finite=False)


def test_2d_image(tmp_path: Path) -> None:
    item = _case(tmp_path, image=np.zeros((8, 7), np.float32), label=np.zeros((8, 7), np.uint8))
    msg = _error(item)
    assert (
        "img.nii.gz [image]: expected a 3D image, shape (C, H, W, D) after LoadImaged(ensure_channel_first=True)" in msg
    )
    assert "found shape (1, 8, 7): a 2D image given to a 3D bundle" in msg


def test_5d_image(tmp_path: Path) -> None:
    msg = _error(_case(tmp_path, image=np.zeros((*SHAPE, 2, 1), np.float32)))
    assert "found shape (1, 8, 7, 5, 2): a 4D image given to a 3D bundle" in msg


def test_4d_image_with_two_channels(tmp_path: Path) -> None:
    msg = _error(_case(tmp_path, image=np.zeros((*SHAPE, 2), np.float32)))
    assert "img.nii.gz [image]: expected 1 channel(s) (in_channels=1), found 2 in shape (2, 8, 7, 5)" in msg
    assert "multi-channel or time-series image?" in msg


def test_wrong_channel_count(tmp_path: Path) -> None:
    msg = _error(_case(tmp_path), in_channels=2)
    assert "img.nii.gz [image]: expected 2 channel(s) (in_channels=2), found 1 in shape (1, 8, 7, 5)" in msg


def test_label_with_two_channels(tmp_path: Path) -> None:
    msg = _error(_case(tmp_path, label=np.zeros((*SHAPE, 2), np.uint8)))
    assert (
        "lbl.nii.gz [label]: a label must have 1 channel (a map of class indices), found 2 in shape (2, 8, 7, 5)" in msg
    )


def test_several_errors_reported_together(tmp_path: Path) -> None:
    image = np.zeros(SHAPE, np.float32)
    image[0, 0, 0] = np.nan
    label = np.full(SHAPE, 5, np.uint8)
    msg = _error(_case(tmp_path, image=image, label=label))
    assert msg.startswith("2 problems:\n") and "NaN" in msg and "label values [5]" in msg


def test_extreme_anisotropy_warns_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    affine = np.diag([0.5, 0.5, 8.0, 1.0])
    item = _case(tmp_path, image_affine=affine, label_affine=affine)
    with caplog.at_level(logging.WARNING, logger="masksam.transforms.validation"):
        _run(item)
    assert (
        "img.nii.gz [image]: spacing (0.5, 0.5, 8) is very anisotropic (largest/smallest 16 > max_anisotropy=10)"
        in caplog.text
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="masksam.transforms.validation"):
        _run(item, max_anisotropy=20)
    assert "anisotropic" not in caplog.text


def test_image_only_for_inference(tmp_path: Path) -> None:
    item = {"image": _nii(tmp_path / "img.nii.gz", np.zeros((8, 7), np.float32))}
    data = LoadImaged("image", ensure_channel_first=True)(item)
    with pytest.raises(ValueError, match="a 2D image given to a 3D bundle"):
        ValidateInputd("image", in_channels=1)(data)
    ValidateInputd("image", in_channels=1, spatial_dims=2)(data)


def test_meta_dict_when_image_only_is_false(tmp_path: Path) -> None:
    label = np.full(SHAPE, 9, np.uint8)
    data = LoadImaged(["image", "label"], ensure_channel_first=True, image_only=False)(_case(tmp_path, label=label))
    with pytest.raises(ValueError, match=r"lbl\.nii\.gz \[label\]: label values \[9\]"):
        ValidateInputd(["image", "label"], num_classes=3)(data)


def test_inside_compose_the_message_survives(tmp_path: Path) -> None:
    label = np.zeros(SHAPE, np.uint8)
    label[0, 0, 0] = 4
    pipeline = Compose(
        [
            LoadImaged(["image", "label"], ensure_channel_first=True),
            ValidateInputd(["image", "label"], num_classes=3, in_channels=1),
        ]
    )
    with pytest.raises(RuntimeError) as excinfo:  # MONAI wraps transform errors: "applying transform ..."
        pipeline(_case(tmp_path, label=label))
    cause = excinfo.value.__cause__
    assert isinstance(cause, ValueError)
    assert f"{tmp_path / 'lbl.nii.gz'} [label]: label values [4] are outside [0, 3)" in str(cause)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        ValidateInputd(num_classes=0)
    with pytest.raises(ValueError, match="in_channels must be >= 1"):
        ValidateInputd(in_channels=0)
    with pytest.raises(ValueError, match="max_anisotropy must be >= 1"):
        ValidateInputd(max_anisotropy=0.5)


@pytest.mark.parametrize("kind", ["garbage", "truncated", "garbage_in_gzip"])
def test_corrupt_file_names_file_and_key(tmp_path: Path, kind: str) -> None:
    item = _case(tmp_path, image=np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32))
    item["label"] = _nii(tmp_path / "lbl.nii.gz", np.zeros((16, 16, 16), np.uint8))
    path = Path(item["image"])
    if kind == "garbage":
        path.write_bytes(np.random.default_rng(1).bytes(300))
    elif kind == "truncated":  # header fine, data cut: the reader's EOFError alone names no file
        path.write_bytes(path.read_bytes()[:-2000])
    else:
        path.write_bytes(gzip.compress(np.random.default_rng(1).bytes(1000)))
    loader = CheckedLoadImaged(["image", "label"], ensure_channel_first=True)
    with pytest.raises(ValueError) as excinfo:
        loader(item)
    assert str(excinfo.value).startswith(f"{path} [image]: cannot read the file: ")
    assert excinfo.value.__cause__ is not None


def test_checked_loader_loads_and_pickles(tmp_path: Path) -> None:
    loader = pickle.loads(pickle.dumps(CheckedLoadImaged(["image", "label"], ensure_channel_first=True)))
    out = loader(_case(tmp_path))
    assert tuple(out["image"].shape) == (1, *SHAPE) and out["label"].meta["filename_or_obj"].endswith("lbl.nii.gz")
