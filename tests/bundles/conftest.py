# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Bundle tests run the real configs through ``monai.bundle`` on synthetic NIfTI with shrunken settings."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: Overrides that shrink the MaskSAM bundle to the tiny backbone (CPU, seconds per epoch).
TINY_MODEL = [
    "--backbone", "tiny", "--patch_size", "32", "--num_slices", "4", "--num_queries", "3", "--num_classes", "3",
    "--generator_widths", "[32,16,16,8,8]", "--mask_head_channels", "8", "--spacing", "[1.0,1.0,2.0]",
]  # fmt: skip
TINY_TRAIN = TINY_MODEL + [
    "--cache_rate", "0", "--num_workers", "0", "--num_samples", "1", "--val_interval", "1", "--progress_bar", "False",
]  # fmt: skip


#: The same settings as typed values, for in-process ``ConfigWorkflow(..., **overrides)``.
TINY_OVERRIDES = {
    "backbone": "tiny", "patch_size": 32, "num_slices": 4, "num_queries": 3, "num_classes": 3,
    "generator_widths": [32, 16, 16, 8, 8], "mask_head_channels": 8, "spacing": [1.0, 1.0, 2.0],
}  # fmt: skip
TINY_TRAIN_OVERRIDES = {
    **TINY_OVERRIDES, "cache_rate": 0.0, "num_workers": 0, "num_samples": 1, "val_interval": 1, "progress_bar": False,
}  # fmt: skip


def copy_bundle(name: str, dest: Path, tiny_metadata: dict | None = None) -> Path:
    """Copy ``bundles/<name>`` to ``dest`` (tests never write into the repository)."""
    root = dest / name
    shutil.copytree(REPO / "bundles" / name, root, ignore=shutil.ignore_patterns("eval", "*.pt", "*.ts"))
    if tiny_metadata:
        meta_path = root / "configs" / "metadata.json"
        meta = json.loads(meta_path.read_text())
        for io_key, values in tiny_metadata.items():
            section, key = io_key.split(".")
            meta["network_data_format"][section][key].update(values)
        meta_path.write_text(json.dumps(meta))
    return root


def run_bundle(bundle: Path, *args: str, timeout: float = 600, torchrun: int = 0) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle <args>`` (or under torchrun) in ``bundle``; fail with its output on error."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"]
    else:
        cmd = [sys.executable]
    cmd += ["-m", "monai.bundle", *args]
    proc = subprocess.run(cmd, cwd=bundle, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="module")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from masksam.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_dataset(root, num_cases=4, shape=(40, 36, 12), num_classes=3, num_folds=2, num_test=1)
    return root
