# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Shared code of the Auto3DSeg algorithm templates (``algorithm_templates/<name>/``).

- :mod:`~masksam.auto3dseg.heuristics`: generic settings from DataAnalyzer statistics (pure functions);
  :mod:`~masksam.auto3dseg.method_heuristics`: per-method ones.
- :mod:`~masksam.auto3dseg.algo`: the ``BundleAlgo`` classes (:class:`MasksamAlgo`, :class:`MasamAlgo`).
- :mod:`~masksam.auto3dseg.nnunet_algo` (:class:`NnunetAlgo`), :mod:`~masksam.auto3dseg.nnunet_data`,
  :mod:`~masksam.auto3dseg.nnunet_workflows`: nnU-Net v2 as an Auto3DSeg algorithm (extra ``nnunet``; ``nnunetv2`` is
  imported only when used).
- :mod:`~masksam.auto3dseg.registration`: template folder and ``algos`` entries (:func:`algo_entry`,
  :func:`masksam_algo_entry`).
- :mod:`~masksam.auto3dseg.config`, :mod:`~masksam.auto3dseg.workflows`,
  :mod:`~masksam.auto3dseg.inference`, :mod:`~masksam.auto3dseg.progress`: what the templates' ``train.py``,
  ``validate.py`` and ``infer.py`` run.
"""

from __future__ import annotations

from masksam.auto3dseg.algo import INPUT_KEYS, SECTIONS, MasamAlgo, MasksamAlgo, TemplateAlgo, compose_config
from masksam.auto3dseg.config import STOCK_ALIASES, algo_root, apply_overrides, read_algo_config, split_config_files
from masksam.auto3dseg.heuristics import (
    ct_window,
    datastats_value,
    in_plane_patch_size,
    intensity_normalization,
    median_resampled_shape,
    num_classes_from_labels,
    resampled_shape,
    target_spacing,
    template_settings,
    training_schedule,
    validation_interval,
)
from masksam.auto3dseg.inference import TemplateInferer
from masksam.auto3dseg.method_heuristics import MA_SAM_SLICES, num_queries, num_slices
from masksam.auto3dseg.nnunet_algo import NnunetAlgo
from masksam.auto3dseg.nnunet_data import (
    NNUNET_SOURCE_FILE,
    NnunetPaths,
    convert_datalist,
    dataset_folder_name,
    folds_to_splits,
    nnunet_environment,
    prepare_nnunet_dataset,
)
from masksam.auto3dseg.nnunet_workflows import (
    TRAINER_SETTINGS,
    NnunetFold,
    NnunetInferer,
    resolve_trainer_class,
    run_nnunet_training,
    run_nnunet_validation,
)
from masksam.auto3dseg.progress import PROGRESS_FILE, ProgressWriter, read_best_score, write_progress
from masksam.auto3dseg.registration import ALGORITHMS, algo_entry, bundle_dir, masksam_algo_entry, template_dir
from masksam.auto3dseg.workflows import run_training, run_validation

__all__ = [
    "ALGORITHMS",
    "INPUT_KEYS",
    "MA_SAM_SLICES",
    "MasamAlgo",
    "MasksamAlgo",
    "NNUNET_SOURCE_FILE",
    "NnunetAlgo",
    "NnunetFold",
    "NnunetInferer",
    "NnunetPaths",
    "PROGRESS_FILE",
    "SECTIONS",
    "ProgressWriter",
    "STOCK_ALIASES",
    "TRAINER_SETTINGS",
    "TemplateAlgo",
    "TemplateInferer",
    "algo_entry",
    "algo_root",
    "apply_overrides",
    "bundle_dir",
    "compose_config",
    "convert_datalist",
    "ct_window",
    "dataset_folder_name",
    "datastats_value",
    "folds_to_splits",
    "in_plane_patch_size",
    "intensity_normalization",
    "masksam_algo_entry",
    "median_resampled_shape",
    "nnunet_environment",
    "num_classes_from_labels",
    "num_queries",
    "num_slices",
    "prepare_nnunet_dataset",
    "read_algo_config",
    "read_best_score",
    "resampled_shape",
    "resolve_trainer_class",
    "run_nnunet_training",
    "run_nnunet_validation",
    "run_training",
    "run_validation",
    "split_config_files",
    "target_spacing",
    "template_dir",
    "template_settings",
    "training_schedule",
    "validation_interval",
    "write_progress",
]
