# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""What a user sees when something is wrong: the cause in the last lines, a folder of cases that survives a bad
file, the data checked without the network, and what to do when ``model.pt`` is missing."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from tests.bundles.conftest import TINY_BUNDLES, TINY_TRAIN, copy_bundle, run_bundle

pytestmark = pytest.mark.xdist_group("bundle_failures")

HEADLINE = "The run stopped because of this error"


def run(bundle: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run ...`` in ``bundle``, whatever its exit status."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "monai.bundle", "run", *args]
    return subprocess.run(cmd, cwd=bundle, env=env, capture_output=True, text=True, timeout=600)


def with_value(args: list[str], key: str, value: str) -> list[str]:
    """``args`` with ``--key``'s value replaced."""
    out = list(args)
    out[out.index(f"--{key}") + 1] = value
    return out


def untrained_weights(bundle: Path, name: str, filename: str = "model.pt") -> Path:
    """Save the tiny network's initial weights where the inference config looks for them (no training needed)."""
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.yaml"))
    parser.update(TINY_BUNDLES[name].overrides)
    parser["bundle_root"] = str(bundle)
    path = bundle / "models" / filename
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return path


def test_folder_inference_with_a_truncated_file_writes_the_others(tmp_path: Path, synthetic_dataset: Path) -> None:
    """One bundle is enough: the dataset, post-processing, handlers and run steps are shared (test_shared_configs);
    re-running into the same folder is tested in tests/engines/test_folder_inference.py."""
    name = "masksam"
    bundle = copy_bundle(name, tmp_path)
    untrained_weights(bundle, name)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(synthetic_dataset / "imagesTs" / "case_004.nii.gz", inputs / "a.nii.gz")
    data = (synthetic_dataset / "imagesTr" / "case_000.nii.gz").read_bytes()
    (inputs / "b.nii.gz").write_bytes(data[: len(data) // 2])  # truncated: sorted between the two good ones
    shutil.copy(synthetic_dataset / "imagesTr" / "case_001.nii.gz", inputs / "c.nii.gz")
    out = tmp_path / "out"
    args = ["--config_file", "configs/inference.yaml", "--dataset_dir", str(inputs), "--output_dir", str(out)]
    proc = run(bundle, *args, *TINY_BUNDLES[name].model)  # the bundle's 2 DataLoader workers
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["a_seg.nii.gz", "c_seg.nii.gz"]
    seg = nib.load(out / "c_seg.nii.gz")
    assert seg.shape == nib.load(inputs / "c.nii.gz").shape
    rows = list(csv.DictReader((out / "failed_cases.csv").open()))
    assert [(r["file"], r["status"]) for r in rows] == [(str(inputs / "b.nii.gz"), "failed")]
    assert "cannot read the file" in rows[0]["reason"]
    last = proc.stderr.strip().splitlines()[-2:]
    assert last[0].startswith(f"inference: 3 case(s): 2 written to {out}, 1 FAILED; listed in {out}")
    assert last[1].startswith(f"  failed: {inputs / 'b.nii.gz'}: [image]: cannot read the file: EOFError")
    assert (proc.stdout + proc.stderr).count("cannot read the file") == 2, "logged once when it happens, summarised"


@pytest.mark.slow
def test_a_failing_training_ends_with_the_cause_once(tmp_path: Path, synthetic_dataset: Path) -> None:
    """Bad label values, with the default cache (thread pool) and with DataLoader worker processes."""
    bad = tmp_path / "bad_data"
    shutil.copytree(synthetic_dataset, bad)
    label = nib.load(bad / "labelsTr" / "case_001.nii.gz")
    values = np.asarray(label.dataobj).copy()
    values[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(values, label.affine), bad / "labelsTr" / "case_001.nii.gz")
    bundle = copy_bundle("masksam", tmp_path)
    cause = f"{bad / 'labelsTr' / 'case_001.nii.gz'} [label]: label values [7] are outside [0, 3) for num_classes=3"
    for cache_rate in ("1.0", "0"):  # CacheDataset's threads; then 2 DataLoader worker processes
        args = with_value(with_value(TINY_TRAIN, "cache_rate", cache_rate), "num_workers", "2")
        proc = run(bundle, "--config_file", "configs/train.yaml", "--dataset_dir", str(bad), "--max_epochs", "1", *args)
        assert proc.returncode == 1, f"cache_rate {cache_rate}: exit status {proc.returncode}\n{proc.stderr[-2000:]}"
        last = proc.stderr.strip().splitlines()[-2:]
        assert last[0].startswith(HEADLINE), f"cache_rate {cache_rate}: {last}"
        assert last[1].startswith(cause), f"cache_rate {cache_rate}: {last}"
        assert proc.stderr.count(HEADLINE) == 1


def test_validate_data_does_not_build_the_network(tmp_path: Path, synthetic_dataset: Path) -> None:
    """The bundle's default ViT-B with a SAM checkpoint that does not exist: the data are still checked."""
    bundle = copy_bundle("masksam", tmp_path)
    proc = run_bundle(
        bundle, "run", "validate_data", "--config_file", "configs/train.yaml", "--dataset_dir", str(synthetic_dataset),
        "--num_classes", "3", "--sam_checkpoint", str(tmp_path / "missing_sam.pth"),
    )  # fmt: skip
    assert "validate-data: checked 5 case(s)" in proc.stdout + proc.stderr
    assert "parameters" not in proc.stdout + proc.stderr, "no network was built"


def test_inference_without_model_pt_says_how_to_use_the_last_checkpoint(
    tmp_path: Path, synthetic_dataset: Path
) -> None:
    """A run that trained but never validated leaves checkpoint_<epoch>.pt and no model.pt."""
    bundle = copy_bundle("masksam", tmp_path)
    weights = untrained_weights(bundle, "masksam")
    torch.save({"model": torch.load(weights, weights_only=True)}, bundle / "models" / "checkpoint_3.pt")
    weights.unlink()
    model = TINY_BUNDLES["masksam"].model
    args = ["--config_file", "configs/inference.yaml", "--dataset_dir", str(synthetic_dataset / "imagesTs")]
    proc = run(bundle, *args, "--output_dir", str(tmp_path / "out"), *model)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert "model.pt is written by validation during training" in last
    assert "use it with --ckpt_path ./models/checkpoint_3.pt" in last  # which loads: tests/engines/test_weights.py
