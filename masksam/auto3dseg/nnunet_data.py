# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""An Auto3DSeg datalist as an nnU-Net v2 dataset: conversion, folds, planning and preprocessing, once per dataset.

nnU-Net v2 (the optional extra ``nnunet``: ``pip install -e ".[nnunet]"``) reads its folders from the environment
variables ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results``. Nothing here sets them at import:
:func:`nnunet_environment` sets them for the duration of one call and restores them after. ``nnunetv2`` is
imported inside the functions that use it, so the package imports without the extra.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser

__all__ = [
    "NNUNET_SOURCE_FILE",
    "NnunetPaths",
    "nnunet_environment",
    "dataset_folder_name",
    "convert_datalist",
    "folds_to_splits",
    "prepare_nnunet_dataset",
]

logger = logging.getLogger(__name__)

#: Written into the preprocessed dataset folder: what it was made from (a later fold reuses it when unchanged).
NNUNET_SOURCE_FILE = "auto3dseg_source.json"


class NnunetPaths:
    """nnU-Net's three folders for one algorithm fold, and the environment variables naming them.

    Args:
        raw: ``nnUNet_raw`` (the converted dataset ``Dataset<id>_<name>/``; shared by the folds).
        preprocessed: ``nnUNet_preprocessed`` (plans, preprocessed arrays, ``splits_final.json``; shared).
        results: ``nnUNet_results`` (the trained fold: ``Dataset<id>_<name>/<trainer>__<plans>__<configuration>/``).
        num_processes: ``nnUNet_def_n_proc`` (nnU-Net's default number of processes: validation export,
            preprocessing); None: nnU-Net's default (8). nnU-Net reads it when ``nnunetv2`` is first imported.
        num_workers: ``nnUNet_n_proc_DA`` (data augmentation processes; 0: in the training process);
            None: nnU-Net's default (12 at most the number of CPUs).
    """

    def __init__(
        self,
        raw: str | os.PathLike[str],
        preprocessed: str | os.PathLike[str],
        results: str | os.PathLike[str],
        num_processes: int | None = None,
        num_workers: int | None = None,
    ) -> None:
        self.raw = os.path.abspath(os.fspath(raw))
        self.preprocessed = os.path.abspath(os.fspath(preprocessed))
        self.results = os.path.abspath(os.fspath(results))
        for name, value in (("num_processes", num_processes), ("num_workers", num_workers)):
            if value is not None and int(value) < 0:
                raise ValueError(f"{name} must be >= 0 or None, got {value!r}")
        self.num_processes = None if num_processes is None else max(1, int(num_processes))
        self.num_workers = None if num_workers is None else int(num_workers)

    def environment(self) -> dict[str, str]:
        """The environment variables nnU-Net reads, for these folders and process counts."""
        env = {"nnUNet_raw": self.raw, "nnUNet_preprocessed": self.preprocessed, "nnUNet_results": self.results}
        if self.num_processes is not None:
            env["nnUNet_def_n_proc"] = str(self.num_processes)
        if self.num_workers is not None:
            env["nnUNet_n_proc_DA"] = str(self.num_workers)
        return env


@contextmanager
def nnunet_environment(paths: NnunetPaths) -> Iterator[dict[str, str]]:
    """Set nnU-Net's environment variables (:meth:`NnunetPaths.environment`) inside the ``with`` block only.

    The previous values (or their absence) are restored on exit, so several algorithms (and folds) can run nnU-Net
    with their own folders in one process. Processes started inside the block inherit the variables.
    """
    env = paths.environment()
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def dataset_folder_name(dataset_id: int, dataset_name: str) -> str:
    """nnU-Net's dataset folder name ``Dataset<id, 3 digits>_<name>``."""
    if not 1 <= int(dataset_id) <= 999:
        raise ValueError(f"dataset_id must be in [1, 999] (nnU-Net's three digits), got {dataset_id!r}")
    if not dataset_name or not str(dataset_name).replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"dataset_name must be letters, digits, '_' or '-', got {dataset_name!r}")
    return f"Dataset{int(dataset_id):03d}_{dataset_name}"


def _training_items(datalist: Mapping[str, Any], source: str) -> list[dict[str, Any]]:
    items = datalist.get("training")
    if not items:
        raise ValueError(f"datalist {source!r} has no 'training' items")
    for i, item in enumerate(items):
        missing = [key for key in ("image", "label", "fold") if not isinstance(item, Mapping) or key not in item]
        if missing:
            raise ValueError(
                f"datalist {source!r}: training item {i} lacks {missing} (nnU-Net needs image, label, fold)"
            )
    return [dict(item) for item in items]


def folds_to_splits(items: Sequence[Mapping[str, Any]], case_names: Sequence[str], source: str = "datalist") -> list:
    """nnU-Net's ``splits_final.json`` from the datalist's folds: split ``f`` validates on the items of fold ``f``.

    Args:
        items: the datalist's ``training`` items (each with ``fold``).
        case_names: nnU-Net's case name of each item, in the same order.
        source: the datalist's name for error messages.

    Returns:
        ``[{"train": [...], "val": [...]}, ...]``, one entry per fold 0..n-1.

    Raises:
        ValueError: the folds are not 0..n-1 (Auto3DSeg's fold ``f`` must be nnU-Net's split ``f``), or only one.
    """
    folds = [int(item["fold"]) for item in items]
    present = sorted(set(folds))
    if present != list(range(len(present))) or len(present) < 2:
        raise ValueError(f"{source}: folds must be 0..n-1 with n >= 2 (one split per Auto3DSeg fold), got {present}")
    return [
        {
            "train": [name for name, f in zip(case_names, folds, strict=True) if f != fold],
            "val": [name for name, f in zip(case_names, folds, strict=True) if f == fold],
        }
        for fold in present
    ]


def convert_datalist(
    datalist: str | os.PathLike[str],
    dataroot: str | os.PathLike[str],
    modality: str,
    raw_dataset: str | os.PathLike[str],
) -> list[dict[str, Any]]:
    """Write the datalist's ``training`` items as an nnU-Net raw dataset in ``raw_dataset`` (replaced if present).

    The conversion is MONAI's (:mod:`monai.apps.nnunet.utils`, what ``nnUNetV2Runner.convert_dataset`` runs): each
    item becomes ``case_<i>`` in datalist order, ``imagesTr/case_<i>_<channel>.nii.gz`` per channel and
    ``labelsTr/case_<i>.nii.gz`` (uint8), with the image's own affine, hence spacing; ``dataset.json`` with
    labels ``0..K-1`` (K - 1 = the largest label) and one channel name per channel (``CT`` selects nnU-Net's CT
    normalisation, other modalities its z-score). ``datalist.json`` maps each item to its ``new_name``. Test
    images are not copied: inference reads them where they are.

    Returns:
        the training items, each with its ``new_name``.
    """
    from monai.apps.nnunet.utils import analyze_data, create_new_data_copy, create_new_dataset_json

    source = os.fspath(datalist)
    if not os.path.isfile(source):
        raise FileNotFoundError(f"datalist not found: {source!r}")
    items = _training_items(ConfigParser.load_config_file(source), source)
    folder = Path(raw_dataset)
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    training = {"training": items, "testing": []}
    channels, foreground = analyze_data(datalist_json=training, data_dir=os.fspath(dataroot))
    channel_name = "CT" if modality.lower() == "ct" else modality
    create_new_dataset_json(
        modality=[channel_name] * channels,  # type: ignore[arg-type]  # MONAI takes one name per channel
        num_foreground_classes=foreground,
        num_input_channels=channels,
        num_training_data=len(items),
        output_filepath=str(folder / "dataset.json"),
    )
    create_new_data_copy(
        test_key="testing",
        datalist_json=training,
        data_dir=os.fspath(dataroot),
        num_input_channels=channels,
        output_datafolder=str(folder),
    )
    return list(ConfigParser.load_config_file(str(folder / "datalist.json"))["training"])


def _source_key(datalist: str, dataroot: str, modality: str, planner: str, gpu_memory_target: float | None) -> str:
    items = _training_items(ConfigParser.load_config_file(datalist), datalist)
    record = {
        "items": items,
        "dataroot": os.path.abspath(dataroot),
        "modality": modality.lower(),
        "planner": planner,
        "gpu_memory_target": gpu_memory_target,
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def prepare_nnunet_dataset(
    paths: NnunetPaths,
    datalist: str | os.PathLike[str],
    dataroot: str | os.PathLike[str],
    modality: str,
    configuration: str,
    dataset_id: int = 1,
    dataset_name: str = "Auto3DSeg",
    planner: str = "ExperimentPlanner",
    gpu_memory_target: float | None = None,
) -> dict[str, Any]:
    """Convert, plan and preprocess the datalist for nnU-Net once per dataset; returns what a fold needs.

    The first fold's call converts (:func:`convert_datalist`), extracts nnU-Net's fingerprint, plans with
    ``planner`` (a class of ``nnunetv2.experiment_planning``, e.g. ``nnUNetPlannerResEncM``), preprocesses
    ``configuration`` and writes ``splits_final.json`` from the folds (:func:`folds_to_splits`). A later call with
    the same datalist, data root, modality and planner reuses all of it (preprocessing only a configuration not
    preprocessed yet); anything else starts over.

    Args:
        paths: nnU-Net's folders (``raw`` and ``preprocessed`` are the ones used here).
        datalist: Auto3DSeg's datalist (``training`` items with ``image``, ``label``, ``fold``).
        dataroot: folder the datalist's paths are relative to.
        modality: ``input.yaml``'s modality (``CT``: nnU-Net's CT normalisation; else z-score).
        configuration: ``3d_fullres``, ``2d`` or ``3d_lowres``.
        dataset_id: nnU-Net's dataset number.
        dataset_name: nnU-Net's dataset name.
        planner: nnU-Net's experiment planner class name.
        gpu_memory_target: the planner's GPU memory target in GB (None: the planner's default).

    Returns:
        ``{"dataset": "Dataset<id>_<name>", "plans": <plans identifier>, "num_classes": K, "configurations": [...]}``.

    Raises:
        ValueError: nnU-Net made no plan for ``configuration`` on this data (``3d_lowres`` exists only for large
            images): choose another with the setting ``configuration``.
    """
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )

    dataset = dataset_folder_name(dataset_id, dataset_name)
    datalist, dataroot = os.path.abspath(os.fspath(datalist)), os.path.abspath(os.fspath(dataroot))
    key = _source_key(datalist, dataroot, modality, planner, gpu_memory_target)
    marker = Path(paths.preprocessed) / dataset / NNUNET_SOURCE_FILE
    record = json.loads(marker.read_text()) if marker.is_file() else {}
    processes = paths.num_processes or 8
    # nnU-Net's planner sets torch's threads to nnUNet_n_proc_DA while it sizes networks: 0 would fail there
    planning = NnunetPaths(paths.raw, paths.preprocessed, paths.results, paths.num_processes, paths.num_workers or None)
    with nnunet_environment(planning):
        if record.get("key") != key:
            logger.info("converting %s for nnU-Net into %s", datalist, Path(paths.raw) / dataset)
            shutil.rmtree(Path(paths.preprocessed) / dataset, ignore_errors=True)
            items = convert_datalist(datalist, dataroot, modality, Path(paths.raw) / dataset)
            extract_fingerprints([int(dataset_id)], num_processes=processes)
            plans = plan_experiments([int(dataset_id)], planner, gpu_memory_target_in_gb=gpu_memory_target)
            splits = folds_to_splits(items, [item["new_name"] for item in items], datalist)
            (Path(paths.preprocessed) / dataset / "splits_final.json").write_text(json.dumps(splits, indent=1))
            labels = json.loads((Path(paths.raw) / dataset / "dataset.json").read_text())["labels"]
            record = {
                "key": key,
                "datalist": datalist,
                "plans": plans,
                "num_classes": len(labels),
                "configurations": [],
            }
        plans_file = Path(paths.preprocessed) / dataset / f"{record['plans']}.json"
        available = sorted(json.loads(plans_file.read_text())["configurations"])
        if configuration not in available:
            raise ValueError(
                f"nnU-Net planned no configuration {configuration!r} for this dataset ({plans_file}); set "
                f"'configuration' to one of {available}"
            )
        if configuration not in record["configurations"]:
            preprocess([int(dataset_id)], record["plans"], configurations=[configuration], num_processes=[processes])
            record["configurations"] = sorted({*record["configurations"], configuration})
        marker.write_text(json.dumps(record, indent=1))
    return {
        "dataset": dataset,
        "plans": record["plans"],
        "num_classes": record["num_classes"],
        "configurations": record["configurations"],
    }
