# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from masksam.data import colin27
from masksam.data.cache import FetchError
from masksam.data.colin27 import (
    AAL_TO_CLASS,
    CLASS_NAMES,
    build_colin27_deep_grey,
    class_names,
    crop_deep_grey,
    fetch_mricron_templates,
    relabel_aal,
)

SHAPE = (40, 44, 36)
AFFINE = np.array([[2.0, 0, 0, -30.0], [0, 1.5, 0, 12.0], [0, 0, 3.0, -50.0], [0, 0, 0, 1]])
# AAL label -> (start, stop) voxel box of a synthetic structure; union box is [10:25, 12:30, 8:20]
STRUCTURES = {
    71: ((10, 14), (12, 16), (8, 12)),
    72: ((21, 25), (12, 16), (8, 12)),
    73: ((10, 13), (18, 22), (10, 14)),
    74: ((22, 25), (18, 22), (10, 14)),
    75: ((13, 15), (18, 21), (12, 14)),
    76: ((20, 22), (18, 21), (12, 14)),
    77: ((14, 17), (24, 30), (14, 20)),
    78: ((18, 21), (24, 30), (14, 20)),
}
BOX = ((10, 25), (12, 30), (8, 20))


def _synthetic_pair(
    folder: Path, aal_affine: np.ndarray = AFFINE, aal_shape: tuple[int, ...] = SHAPE
) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t1 = rng.integers(0, 255, SHAPE, dtype=np.uint8)
    aal = np.zeros(aal_shape, dtype=np.uint8)
    aal[1:5, 1:5, 1:5] = 1  # cortical labels far from the structures: must become background
    aal[30:35, 35:40, 25:30] = 116
    aal[16:18, 12:14, 8:10] = 37  # inside the crop, not a deep grey label
    for label, box in STRUCTURES.items():
        aal[tuple(slice(a, b) for a, b in box)] = label
    t1_path, aal_path = folder / "t1.nii.gz", folder / "aal.nii.gz"
    nib.save(nib.Nifti1Image(t1, AFFINE), t1_path)
    nib.save(nib.Nifti1Image(aal, aal_affine), aal_path)
    return t1_path, aal_path


def test_class_names() -> None:
    names = class_names()
    assert names == list(CLASS_NAMES) and len(names) == 9
    assert names[0] == "background" and names[1] == "caudate_left" and names[8] == "thalamus_right"
    assert sorted(AAL_TO_CLASS) == list(range(71, 79)) and sorted(AAL_TO_CLASS.values()) == list(range(1, 9))


def test_relabel_aal() -> None:
    aal = np.array([0, 1, 37, 71, 72, 73, 74, 75, 76, 77, 78, 79, 116], dtype=np.int16)
    out = relabel_aal(aal)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0])
    np.testing.assert_array_equal(relabel_aal(np.array([71.0, 3.0])), [1, 0])
    with pytest.raises(ValueError, match="non-negative"):
        relabel_aal(np.array([-1, 71]))
    with pytest.raises(ValueError, match="integers"):
        relabel_aal(np.array([71.5]))


@pytest.mark.parametrize("margin", [0, 3])
def test_crop_deep_grey(tmp_path: Path, margin: int) -> None:
    t1_path, aal_path = _synthetic_pair(tmp_path / "in")
    image_out, label_out = tmp_path / "out" / "imagesTr" / "c.nii.gz", tmp_path / "out" / "labelsTr" / "c.nii.gz"
    summary = crop_deep_grey(t1_path, aal_path, image_out, label_out, margin=margin)

    start = [a - margin for a, _ in BOX]
    end = [b + margin for _, b in BOX]
    assert summary["box_start"] == start and summary["box_end"] == end
    expected_shape = tuple(e - s for s, e in zip(start, end, strict=True))
    image, label = nib.load(image_out), nib.load(label_out)
    assert image.shape == label.shape == summary["shape"] == expected_shape

    # the crop keeps world positions: new origin = old affine applied to the crop start
    expected_affine = AFFINE.copy()
    expected_affine[:3, 3] = AFFINE[:3, :3] @ np.array(start) + AFFINE[:3, 3]
    np.testing.assert_allclose(image.affine, expected_affine)
    np.testing.assert_allclose(label.affine, expected_affine)
    assert summary["spacing"] == (2.0, 1.5, 3.0)

    box = tuple(slice(s, e) for s, e in zip(start, end, strict=True))
    np.testing.assert_array_equal(np.asarray(image.dataobj), np.asarray(nib.load(t1_path).dataobj)[box])
    assert image.get_data_dtype() == np.uint8
    lab = np.asarray(label.dataobj)
    assert label.get_data_dtype() == np.uint8
    assert set(np.unique(lab).tolist()) == set(range(9))
    for aal_label, struct in STRUCTURES.items():
        cls = AAL_TO_CLASS[aal_label]
        inner = tuple(slice(a - s, b - s) for (a, b), s in zip(struct, start, strict=True))
        assert (lab[inner] == cls).all()
        n = int(np.prod([b - a for a, b in struct]))
        assert summary["voxels"][cls] == n
    # label 37 sat inside the crop and must be background now
    assert (
        lab[tuple(slice(a - s, b - s) for (a, b), s in zip(((16, 18), (12, 14), (8, 10)), start, strict=True))] == 0
    ).all()


def test_crop_margin_clipped_at_volume_edge(tmp_path: Path) -> None:
    t1_path, aal_path = _synthetic_pair(tmp_path / "in")
    summary = crop_deep_grey(t1_path, aal_path, tmp_path / "i.nii.gz", tmp_path / "l.nii.gz", margin=15)
    assert summary["box_start"] == [0, 0, 0]
    assert summary["box_end"] == [SHAPE[0], SHAPE[1], 35]
    np.testing.assert_allclose(nib.load(tmp_path / "i.nii.gz").affine, AFFINE)


def test_crop_rejects_grid_mismatch(tmp_path: Path) -> None:
    moved = AFFINE.copy()
    moved[0, 3] += 1.0
    t1_path, aal_path = _synthetic_pair(tmp_path / "affine", aal_affine=moved)
    with pytest.raises(ValueError, match="AAL grid differs.*aal.nii.gz"):
        crop_deep_grey(t1_path, aal_path, tmp_path / "i.nii.gz", tmp_path / "l.nii.gz")
    t1_path, aal_path = _synthetic_pair(tmp_path / "shape", aal_shape=(40, 44, 37))
    with pytest.raises(ValueError, match=r"\(40, 44, 37\)"):
        crop_deep_grey(t1_path, aal_path, tmp_path / "i.nii.gz", tmp_path / "l.nii.gz")


def test_crop_rejects_bad_inputs(tmp_path: Path) -> None:
    t1_path, aal_path = _synthetic_pair(tmp_path / "in")
    with pytest.raises(ValueError, match="margin"):
        crop_deep_grey(t1_path, aal_path, tmp_path / "i.nii.gz", tmp_path / "l.nii.gz", margin=-1)
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        crop_deep_grey(tmp_path / "missing.nii.gz", aal_path, tmp_path / "i.nii.gz", tmp_path / "l.nii.gz")
    aal = np.asarray(nib.load(aal_path).dataobj).copy()
    aal[aal == 76] = 0
    nib.save(nib.Nifti1Image(aal, AFFINE), aal_path)
    with pytest.raises(ValueError, match=r"\[76\] are absent"):
        crop_deep_grey(t1_path, aal_path, tmp_path / "i.nii.gz", tmp_path / "l.nii.gz")


def _fake_package(root: Path) -> Path:
    templates = root / "usr/share/mricron/templates"
    t1_path, aal_path = _synthetic_pair(templates)
    t1_path.rename(templates / "ch2bet.nii.gz")
    aal_path.rename(templates / "aal.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, dtype=np.uint8), AFFINE), templates / "ch2.nii.gz")
    doc = root / "usr/share/doc/mricron-data"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text("Files: *\nLicense: BSD-3-clause\n")
    return templates


def test_fetch_is_idempotent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    templates = _fake_package(tmp_path / "mricron-data")

    def no_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("must not run apt-get when the package is already extracted")

    monkeypatch.setattr(colin27, "run_command", no_run)
    assert fetch_mricron_templates(tmp_path) == templates


def test_fetch_without_apt_get(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("masksam.data.cache.shutil.which", lambda name: None)
    with pytest.raises(FetchError, match="apt-get"):
        fetch_mricron_templates(tmp_path)


def test_build_with_synthetic_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    templates = _fake_package(tmp_path / "cache" / "mricron-data")
    monkeypatch.setattr(colin27, "fetch_mricron_templates", lambda cache_dir=None: templates)
    datalist_path = build_colin27_deep_grey(tmp_path / "ds", cache_dir=tmp_path / "cache", margin=2)
    out = tmp_path / "ds"
    assert datalist_path == out / "dataset.json"
    datalist = json.loads(datalist_path.read_text())
    assert datalist["labels"] == {str(i): n for i, n in enumerate(CLASS_NAMES)}
    assert datalist["modality"] == {"0": "MRI"}
    item = {"image": "imagesTr/colin27_t1.nii.gz", "label": "labelsTr/colin27_t1.nii.gz", "fold": 0}
    assert datalist["training"] == [item] and datalist["validation"] == [item]
    assert datalist["testing"] == [{"image": "imagesTr/colin27_t1.nii.gz"}]
    for key in ("image", "label"):
        assert (out / item[key]).is_file()
    assert "licence" in datalist and "name" in datalist and "description" in datalist
    credits = (out / "CREDITS.txt").read_text()
    assert "Louis Collins" in credits and "Tzourio-Mazoyer" in credits and "License: BSD-3-clause" in credits
    assert nib.load(out / item["label"]).shape == (19, 22, 16)


@pytest.mark.realdata
@pytest.mark.xdist_group("colin27")
def test_real_colin27_deep_grey(tmp_path: Path, real_cache_dir: Path) -> None:
    try:
        templates = fetch_mricron_templates(real_cache_dir)
    except FetchError as err:
        pytest.skip(f"Debian package mricron-data could not be fetched (needs apt-get and package lists): {err}")
    for name in ("ch2.nii.gz", "ch2bet.nii.gz", "aal.nii.gz"):
        assert nib.load(templates / name).shape == (181, 217, 181)

    datalist_path = build_colin27_deep_grey(tmp_path, cache_dir=real_cache_dir)
    datalist = json.loads(datalist_path.read_text())
    label_img = nib.load(tmp_path / datalist["training"][0]["label"])
    image_img = nib.load(tmp_path / datalist["training"][0]["image"])
    assert label_img.shape == image_img.shape
    assert all(40 < s < 120 for s in label_img.shape)
    np.testing.assert_allclose(label_img.header.get_zooms(), (1.0, 1.0, 1.0))
    np.testing.assert_allclose(label_img.affine, image_img.affine)

    labels = np.asarray(label_img.dataobj)
    counts = np.bincount(labels.ravel(), minlength=9)
    assert len(counts) == 9 and set(np.unique(labels).tolist()) == set(range(9))
    # AAL volumes in 1 mm^3 voxels: caudate/putamen/thalamus ~7.5k-8.7k, pallidum ~2.2k
    for cls in (1, 2, 3, 4, 7, 8):
        assert 6000 < counts[cls] < 11000, (CLASS_NAMES[cls], counts[cls])
    for cls in (5, 6):
        assert 1500 < counts[cls] < 3500, (CLASS_NAMES[cls], counts[cls])
    # the crop sits where it was in the full atlas: world coordinates of label voxels agree
    aal_img = nib.load(templates / "aal.nii.gz")
    aal = np.asarray(aal_img.dataobj)
    vox = np.argwhere(labels == 3)[0]
    world = label_img.affine @ np.append(vox, 1)
    src = np.round(np.linalg.inv(aal_img.affine) @ world).astype(int)[:3]
    assert aal[tuple(src)] == 73
    # the T1 is not empty inside the brain structures
    assert np.asarray(image_img.dataobj)[labels > 0].mean() > 20
