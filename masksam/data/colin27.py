# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Colin27 T1 MRI with eight deep grey nuclei from the AAL atlas, as a one-case MSD-style dataset.

The data comes from Debian's ``mricron-data`` package (fetched without root with ``apt-get download`` and
``dpkg-deb -x``): ``ch2.nii.gz`` / ``ch2bet.nii.gz`` (Colin27, 181x217x181, 1 mm) and ``aal.nii.gz`` (AAL labels
1..116 on the same grid). :func:`build_colin27_deep_grey` crops both around caudate, putamen, pallidum and thalamus
(left and right: 8 classes) and writes ``imagesTr/``, ``labelsTr/``, ``dataset.json`` and ``CREDITS.txt``.
Nothing written here belongs in git.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from masksam.data.cache import CommandError, FetchError, publish_dir, require_executable, resolve_cache_dir, run_command

__all__ = [
    "AAL_TO_CLASS",
    "CLASS_NAMES",
    "MRICRON_TEMPLATE_FILES",
    "class_names",
    "fetch_mricron_templates",
    "relabel_aal",
    "crop_deep_grey",
    "build_colin27_deep_grey",
]

logger = logging.getLogger(__name__)

#: AAL label -> class index of the deep grey dataset; every other AAL label becomes background (0).
AAL_TO_CLASS: Mapping[int, int] = {71: 1, 72: 2, 73: 3, 74: 4, 75: 5, 76: 6, 77: 7, 78: 8}

#: Class names indexed by class value (0 is background).
CLASS_NAMES: tuple[str, ...] = (
    "background",
    "caudate_left",
    "caudate_right",
    "putamen_left",
    "putamen_right",
    "pallidum_left",
    "pallidum_right",
    "thalamus_left",
    "thalamus_right",
)

#: Files of ``mricron-data`` this module needs, relative to its templates folder.
MRICRON_TEMPLATE_FILES: tuple[str, ...] = ("ch2.nii.gz", "ch2bet.nii.gz", "aal.nii.gz")

_PACKAGE = "mricron-data"
_TEMPLATES_SUBDIR = Path("usr/share/mricron/templates")
_COPYRIGHT_SUBDIR = Path("usr/share/doc/mricron-data/copyright")
_SOURCE_FILE = "SOURCE.txt"
_CASE = "colin27_t1"

_MNI_NOTICE = """\
Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre,
Montreal Neurological Institute, McGill University. Permission to use,
copy, modify, and distribute this software and its documentation for any
purpose and without fee is hereby granted, provided that the above
copyright notice appear in all copies. The authors and McGill University
make no representations about the suitability of this software for any
purpose. It is provided "as is" without express or implied warranty. The
authors are not responsible for any data loss, equipment damage, property
loss, or injury to subjects or patients resulting from the use or misuse
of this software package."""

_CREDITS_HEAD = """\
Colin27 deep grey nuclei dataset (built by masksam.data.colin27)
===============================================================

These files are derived from Debian's `mricron-data` package ({source}).
They are not part of the MaskSAM repository and must not be committed to it.

Image: Colin27 ("ch2"/"ch2bet") single-subject T1-weighted MRI
--------------------------------------------------------------
Holmes CJ, Hoge R, Collins L, Woods R, Toga AW, Evans AC. Enhancement of MR
images using registration for signal averaging. J Comput Assist Tomogr
1998;22(2):324-333.

The Colin27 template is copyright of the McConnell Brain Imaging Centre,
Montreal Neurological Institute (MNI); its copyright notice must be kept with
every copy. The notice as published by the MNI with the template:

{mni_notice}

Labels: AAL (Automated Anatomical Labeling) atlas, labels 71-78
----------------------------------------------------------------
Tzourio-Mazoyer N, Landeau B, Papathanassiou D, Crivello F, Etard O, Delcroix N,
Mazoyer B, Joliot M. Automated anatomical labeling of activations in SPM using a
macroscopic anatomical parcellation of the MNI MRI single-subject brain.
NeuroImage 2002;15(1):273-289.

The AAL authors (GIN, Caen) describe AAL as freeware distributed under the GNU
General Public License. Here AAL labels 71-78 were relabelled to classes 1-8

{classes}

all other AAL regions were set to 0, and image and labels were cropped to the
bounding box of these structures plus a margin.

Packaging: copyright file of the Debian package `mricron-data`
(/usr/share/doc/mricron-data/copyright), copied verbatim
--------------------------------------------------------------------------
"""


def class_names() -> list[str]:
    """Return the class names of the deep grey dataset, indexed by label value (0 is background)."""
    return list(CLASS_NAMES)


def _templates_ok(root: Path) -> bool:
    templates = root / _TEMPLATES_SUBDIR
    return all((templates / f).is_file() for f in MRICRON_TEMPLATE_FILES) and (root / _COPYRIGHT_SUBDIR).is_file()


def fetch_mricron_templates(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Obtain Debian's ``mricron-data`` package without root and return its templates folder.

    Runs ``apt-get download mricron-data`` in a temporary folder inside the cache, extracts the ``.deb`` with
    ``dpkg-deb -x`` and publishes it as ``<cache>/mricron-data``. Skips all of this when the extracted files are
    already there.

    Args:
        cache_dir: cache folder; ``None`` uses :func:`~masksam.data.cache.default_cache_dir`.

    Returns:
        ``<cache>/mricron-data/usr/share/mricron/templates``, holding at least :data:`MRICRON_TEMPLATE_FILES`.

    Raises:
        FetchError: if ``apt-get`` or ``dpkg-deb`` is missing, the download or extraction fails, or the package
            lacks one of the expected files.
        RuntimeError: if ``<cache>/mricron-data`` exists but is incomplete (delete it).
    """
    cache = resolve_cache_dir(cache_dir)
    root = cache / _PACKAGE
    if _templates_ok(root):
        logger.debug("mricron-data already extracted in %s", root)
        return root / _TEMPLATES_SUBDIR
    if root.exists():
        raise RuntimeError(f"{root} exists but lacks some of {MRICRON_TEMPLATE_FILES}; delete it and fetch again")

    hint = "This fetch needs a Debian/Ubuntu system with apt (package 'apt') and dpkg (package 'dpkg')."
    apt_get = require_executable("apt-get", hint)
    dpkg_deb = require_executable("dpkg-deb", hint)
    with tempfile.TemporaryDirectory(prefix=f".{_PACKAGE}-", dir=cache) as tmp:
        tmp_path = Path(tmp)
        download = tmp_path / "download"
        download.mkdir()
        logger.info("downloading Debian package %s with apt-get into %s", _PACKAGE, download)
        try:
            run_command([apt_get, "download", _PACKAGE], cwd=download)
        except CommandError as err:
            raise FetchError(
                f"'apt-get download {_PACKAGE}' failed. If apt reports that it cannot locate the package, the "
                "package lists are missing or stale: run 'apt-get update' (as root) and make sure a Debian "
                f"'main' (or Ubuntu 'universe') source is configured.\n{err}"
            ) from err
        debs = sorted(download.glob(f"{_PACKAGE}_*.deb"))
        if len(debs) != 1:
            raise FetchError(f"expected one {_PACKAGE}_*.deb in {download} after apt-get download, found {debs}")
        staged = tmp_path / "extracted"
        try:
            run_command([dpkg_deb, "-x", debs[0], staged])
        except CommandError as err:
            raise FetchError(f"could not extract {debs[0].name} with dpkg-deb\n{err}") from err
        (staged / _SOURCE_FILE).write_text(f"Debian package file {debs[0].name} (obtained with apt-get download)\n")
        if not _templates_ok(staged):
            missing = [f for f in MRICRON_TEMPLATE_FILES if not (staged / _TEMPLATES_SUBDIR / f).is_file()]
            raise FetchError(f"{debs[0].name} does not contain {missing} under /{_TEMPLATES_SUBDIR}")
        publish_dir(staged, root)
    logger.info("extracted %s into %s", _PACKAGE, root)
    return root / _TEMPLATES_SUBDIR


def relabel_aal(aal: np.ndarray, mapping: Mapping[int, int] = AAL_TO_CLASS) -> np.ndarray:
    """Map AAL region labels to class indices; every label not in ``mapping`` becomes 0.

    Args:
        aal: integer AAL label volume of any shape, non-negative values.
        mapping: AAL label -> class index (1..255).

    Returns:
        ``uint8`` array of the same shape.

    Raises:
        ValueError: if ``aal`` holds negative or non-integer values, or ``mapping`` has a class outside 1..255.
    """
    aal = np.asarray(aal)
    if not np.issubdtype(aal.dtype, np.integer):
        if not np.array_equal(aal, np.round(aal)):
            raise ValueError(f"AAL labels must be integers, got non-integer values of dtype {aal.dtype}")
        aal = aal.astype(np.int64)
    if aal.size and aal.min() < 0:
        raise ValueError(f"AAL labels must be non-negative, got minimum {aal.min()}")
    bad = {k: v for k, v in mapping.items() if not 0 < v < 256}
    if bad:
        raise ValueError(f"class indices must be in 1..255, got {bad}")
    lut = np.zeros(max(int(aal.max(initial=0)), *mapping.keys()) + 1, dtype=np.uint8)
    for src, dst in mapping.items():
        lut[src] = dst
    return lut[aal]


def crop_deep_grey(
    t1_path: str | os.PathLike[str],
    aal_path: str | os.PathLike[str],
    image_out: str | os.PathLike[str],
    label_out: str | os.PathLike[str],
    margin: int = 6,
    mapping: Mapping[int, int] = AAL_TO_CLASS,
) -> dict[str, Any]:
    """Relabel an AAL volume to the deep grey classes and crop image and labels around them.

    The crop is the bounding box of all mapped structures plus ``margin`` voxels on each side, clipped to the
    volume. It is taken with nibabel's ``img.slicer``, so the written affines place the crop where it was.

    Args:
        t1_path: T1 image (NIfTI).
        aal_path: AAL labels (NIfTI) on exactly the same grid as ``t1_path``.
        image_out: where to write the cropped image (``.nii.gz``); keeps the input dtype and header.
        label_out: where to write the cropped ``uint8`` labels (``.nii.gz``).
        margin: voxels added on each side of the bounding box, >= 0.
        mapping: AAL label -> class index; every class must be present in the atlas.

    Returns:
        A summary: ``shape`` (cropped), ``spacing`` (mm), ``box_start``/``box_end`` (voxel indices in the input,
        end exclusive), ``voxels`` (class index -> voxel count, background included) and ``affine`` (cropped, 4x4
        list).

    Raises:
        FileNotFoundError: if an input file is missing.
        ValueError: on a negative margin, a grid mismatch between the two files (shape or affine), a non-3D input,
            or when a mapped AAL label is absent from the atlas.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    t1_path, aal_path = Path(t1_path), Path(aal_path)
    for p in (t1_path, aal_path):
        if not p.is_file():
            raise FileNotFoundError(f"input file not found: {p}")
    t1_img = nib.load(t1_path)
    aal_img = nib.load(aal_path)
    if len(t1_img.shape) != 3:
        raise ValueError(f"{t1_path} must be a 3D volume, got shape {t1_img.shape}")
    if t1_img.shape != aal_img.shape or not np.allclose(t1_img.affine, aal_img.affine, atol=1e-4):
        raise ValueError(
            f"AAL grid differs from the T1 grid: {aal_path} has shape {aal_img.shape} and affine\n{aal_img.affine}\n"
            f"but {t1_path} has shape {t1_img.shape} and affine\n{t1_img.affine}"
        )

    aal = np.asanyarray(aal_img.dataobj)
    present = set(np.unique(aal).tolist())
    absent = sorted(k for k in mapping if k not in present)
    if absent:
        raise ValueError(f"AAL labels {absent} are absent from {aal_path}; cannot build all classes")
    labels = relabel_aal(aal, mapping)

    from monai.transforms.utils import generate_spatial_bounding_box

    start, end = generate_spatial_bounding_box(labels[None], margin=margin, allow_smaller=True)
    box = tuple(slice(int(s), int(e)) for s, e in zip(start, end, strict=True))

    label_img = nib.Nifti1Image(labels, aal_img.affine, aal_img.header)
    label_img.set_data_dtype(np.uint8)
    label_img.header.set_slope_inter(1.0, 0.0)
    image_crop = t1_img.slicer[box]
    label_crop = label_img.slicer[box]

    for out, img in ((Path(image_out), image_crop), (Path(label_out), label_crop)):
        out.parent.mkdir(parents=True, exist_ok=True)
        nib.save(img, out)

    cropped = np.asarray(label_crop.dataobj)
    counts = np.bincount(cropped.ravel(), minlength=max(mapping.values()) + 1)
    return {
        "shape": tuple(int(s) for s in image_crop.shape),
        "spacing": tuple(float(z) for z in image_crop.header.get_zooms()[:3]),
        "box_start": [int(s) for s in start],
        "box_end": [int(e) for e in end],
        "voxels": {int(c): int(n) for c, n in enumerate(counts)},
        "affine": image_crop.affine.tolist(),
    }


def _datalist(image_rel: str, label_rel: str, licence: str) -> dict[str, Any]:
    item = {"image": image_rel, "label": label_rel, "fold": 0}
    return {
        "name": "Colin27DeepGrey",
        "description": "Colin27 T1 MRI cropped around 8 deep grey nuclei (AAL caudate, putamen, pallidum, thalamus)",
        "reference": "Holmes et al. 1998 (Colin27); Tzourio-Mazoyer et al. 2002 (AAL); via Debian mricron-data",
        "licence": licence,
        "tensorImageSize": "3D",
        "modality": {"0": "MRI"},
        "labels": {str(i): name for i, name in enumerate(CLASS_NAMES)},
        "numTraining": 1,
        "numTest": 1,
        "training": [item],
        "validation": [dict(item)],
        "testing": [{"image": image_rel}],
    }


def build_colin27_deep_grey(
    out_dir: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
    margin: int = 6,
    skull_stripped: bool = True,
) -> Path:
    """Write the Colin27 deep grey dataset (one case, 8 classes) with its datalist and credits.

    Layout written under ``out_dir``: ``imagesTr/colin27_t1.nii.gz``, ``labelsTr/colin27_t1.nii.gz`` (``uint8``,
    0..8, see :data:`CLASS_NAMES`), ``dataset.json`` (MSD/Auto3DSeg datalist with relative paths; the single case
    is in ``training`` fold 0, ``validation`` and ``testing``) and ``CREDITS.txt`` (Colin27/MNI and AAL credits plus
    the Debian copyright file). Shape, spacing and voxel count per class are logged at INFO level.

    Args:
        out_dir: output folder (created if missing); existing files of this dataset are overwritten.
        cache_dir: cache for the Debian package; ``None`` uses the default cache.
        margin: voxels added around the bounding box of the 8 structures.
        skull_stripped: use the brain-extracted ``ch2bet.nii.gz`` (True) or ``ch2.nii.gz`` with skull (False).

    Returns:
        Path of the written ``dataset.json``.

    Raises:
        FetchError: if the Debian package cannot be obtained.
        ValueError: if the package's AAL and T1 grids differ.
    """
    templates = fetch_mricron_templates(cache_dir)
    package_root = templates.parents[len(_TEMPLATES_SUBDIR.parts) - 1]
    out = Path(out_dir)
    image_rel, label_rel = f"imagesTr/{_CASE}.nii.gz", f"labelsTr/{_CASE}.nii.gz"
    t1_name = "ch2bet.nii.gz" if skull_stripped else "ch2.nii.gz"
    summary = crop_deep_grey(
        templates / t1_name, templates / "aal.nii.gz", out / image_rel, out / label_rel, margin=margin
    )

    licence = (
        "Colin27: (C) McConnell Brain Imaging Centre, MNI; copyright notice must be kept (see CREDITS.txt). "
        "AAL: Tzourio-Mazoyer et al. 2002, GPL freeware as described by its authors. "
        "Packaged by Debian (mricron-data, BSD-3-clause)."
    )
    datalist = out / "dataset.json"
    datalist.write_text(json.dumps(_datalist(image_rel, label_rel, licence), indent=2) + "\n")

    source_file = package_root / _SOURCE_FILE
    source = source_file.read_text().strip() if source_file.is_file() else "Debian package mricron-data"
    credits_text = _CREDITS_HEAD.format(
        source=source,
        mni_notice=_MNI_NOTICE,
        classes="\n".join(f"  AAL {k} -> {v} {CLASS_NAMES[v]}" for k, v in AAL_TO_CLASS.items()),
    )
    (out / "CREDITS.txt").write_text(credits_text + "\n" + (package_root / _COPYRIGHT_SUBDIR).read_text())

    logger.info(
        "Colin27 deep grey crop from %s: shape %s, spacing %s mm, voxel box %s..%s of the template",
        t1_name,
        summary["shape"],
        summary["spacing"],
        summary["box_start"],
        summary["box_end"],
    )
    for cls, n in summary["voxels"].items():
        logger.info("  class %d %-15s %8d voxels", cls, CLASS_NAMES[cls], n)
    logger.info("wrote %s", datalist)
    return datalist
