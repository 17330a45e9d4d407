# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Helpers of the template tests: one BLAS thread, the synthetic dataset, generation from given statistics."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from masksam.auto3dseg import TemplateAlgo, template_dir

__all__ = ["REPO", "SUBPROCESS_ENV", "generate", "make_template_dataset", "read_yaml", "write_inputs"]

REPO = Path(__file__).resolve().parents[2]
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def read_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One BLAS thread here and in the training subprocesses (which inherit the environment): 2 cores."""
    threads, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(threads)
    if env is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = env


def make_template_dataset(root: Path) -> Path:
    """4 labelled CT-like volumes (3 classes) in 2 folds and 2 test images, the second in another grid (flipped x,
    0.8 x 1.2 x 2.5 mm): predictions must come back to each image's grid. Returns ``root``."""
    from masksam.data.synthetic import make_synthetic_dataset

    datalist = make_synthetic_dataset(root, num_cases=4, shape=(40, 36, 12), num_classes=3, num_folds=2, num_test=1)
    image = nib.load(root / "imagesTs" / "case_004.nii.gz")
    affine = np.diag([-0.8, 1.2, 2.5, 1.0])
    affine[:3, 3] = [30.0, -5.0, 10.0]
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[:, :30, :10], affine), root / "imagesTs" / "case_005.nii.gz")
    data = json.loads(datalist.read_text())
    data["testing"].append({"image": "imagesTs/case_005.nii.gz"})
    datalist.write_text(json.dumps(data))
    return root


def write_inputs(folder: Path, stats: dict, modality: str, **extra) -> tuple[Path, Path]:
    """datastats.yaml and input.yaml for fill_template_config (a 5-fold datalist of 10 cases)."""
    folder.mkdir(parents=True, exist_ok=True)
    datalist = folder / "dataset.json"
    items = [{"image": f"img{i}.nii.gz", "label": f"lab{i}.nii.gz", "fold": i % 5} for i in range(10)]
    datalist.write_text(json.dumps({"training": items}))
    stats_file, input_file = folder / "datastats.yaml", folder / "input.yaml"
    stats_file.write_text(yaml.safe_dump(stats))
    inputs = {"modality": modality, "datalist": str(datalist), "dataroot": str(folder), "name": "t", **extra}
    input_file.write_text(yaml.safe_dump(inputs))
    return stats_file, input_file


def generate(
    algo_class: type[TemplateAlgo], name: str, folder: Path, stats_file: Path, input_file: Path, fold: int = 1
) -> tuple[TemplateAlgo, dict]:
    """``<folder>/<name>_<fold>`` generated as BundleGen does; returns the algorithm and the written config."""
    algo = algo_class(template_path=str(template_dir()))
    algo.name = name
    algo.set_data_stats(str(stats_file))
    algo.set_data_source(str(input_file))
    algo.export_to_disk(str(folder), f"{name}_{fold}", fold=fold)
    return algo, read_yaml(folder / f"{name}_{fold}" / "configs" / "hyper_parameters.yaml")
