# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Bundle tests run the real configs through ``monai.bundle`` on synthetic NIfTI with shrunken settings."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
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
    "--iterations_per_epoch", "0",
]  # fmt: skip


#: The same settings as typed values, for in-process ``ConfigWorkflow(..., **overrides)``.
TINY_OVERRIDES = {
    "backbone": "tiny", "patch_size": 32, "num_slices": 4, "num_queries": 3, "num_classes": 3,
    "generator_widths": [32, 16, 16, 8, 8], "mask_head_channels": 8, "spacing": [1.0, 1.0, 2.0],
}  # fmt: skip
TINY_TRAIN_OVERRIDES = {
    **TINY_OVERRIDES, "cache_rate": 0.0, "num_workers": 0, "num_samples": 1, "val_interval": 1, "progress_bar": False,
    "iterations_per_epoch": 0,
}  # fmt: skip


#: MaskSAM's tiny metadata (shapes of the tiny settings).
TINY_META = {
    "inputs.image": {"spatial_shape": [32, 32, 4]},
    "outputs.pred": {"num_channels": 3, "spatial_shape": [32, 32, 4], "channel_def": {"0": "bg", "1": "a", "2": "b"}},
}

#: Tiny MA-SAM on each volume's own grid (the bundle's default spacing: null).
MA_SAM_TINY_MODEL = [
    "--backbone", "tiny", "--patch_size", "32", "--num_slices", "3", "--num_classes", "3", "--fact_rank", "4",
    "--adapter_dim", "8",
]  # fmt: skip
MA_SAM_TINY_TRAIN = MA_SAM_TINY_MODEL + [
    "--cache_rate", "0", "--num_workers", "0", "--num_samples", "2", "--val_interval", "1", "--progress_bar", "False",
    "--warmup_iterations", "2",
]  # fmt: skip
MA_SAM_TINY_OVERRIDES = {
    "backbone": "tiny", "patch_size": 32, "num_slices": 3, "num_classes": 3, "fact_rank": 4, "adapter_dim": 8,
}  # fmt: skip
MA_SAM_TINY_TRAIN_OVERRIDES = {
    **MA_SAM_TINY_OVERRIDES, "cache_rate": 0.0, "num_workers": 0, "num_samples": 2, "val_interval": 1,
    "progress_bar": False, "warmup_iterations": 2,
}  # fmt: skip
MA_SAM_TINY_META = {
    "inputs.image": {"spatial_shape": [32, 32, 3]},
    "outputs.pred": {"num_channels": 3, "spatial_shape": [32, 32, 3], "channel_def": {"0": "bg", "1": "a", "2": "b"}},
}


#: Tiny Med-SA: 32x32 slices, stacks of 2, 8-wide decoder adapters.
MED_SA_TINY_MODEL = [
    "--backbone", "tiny", "--patch_size", "32", "--num_slices", "2", "--decoder_adapter_dim", "8",
    "--hyper_hidden_dim", "8", "--spacing", "[1.0,1.0,2.0]",
]  # fmt: skip
MED_SA_TINY_TRAIN = MED_SA_TINY_MODEL + [
    "--num_classes", "3", "--cache_rate", "0", "--num_workers", "0", "--num_samples", "1", "--val_interval", "1",
    "--progress_bar", "False",
]  # fmt: skip
MED_SA_TINY_OVERRIDES = {
    "backbone": "tiny", "patch_size": 32, "num_slices": 2, "decoder_adapter_dim": 8, "hyper_hidden_dim": 8,
    "spacing": [1.0, 1.0, 2.0],
}  # fmt: skip
MED_SA_TINY_TRAIN_OVERRIDES = {
    **MED_SA_TINY_OVERRIDES, "num_classes": 3, "cache_rate": 0.0, "num_workers": 0, "num_samples": 1,
    "val_interval": 1, "progress_bar": False,
}  # fmt: skip
MED_SA_TINY_META = {
    "inputs.image": {"spatial_shape": [32, 32, 2]},
    "outputs.pred": {"spatial_shape": [32, 32, 2]},
}

#: Tiny SAM-UNet: single 32x32 slices (the bundle's num_slices 1), ResNet-34 branch.
SAM_UNET_TINY_MODEL = ["--backbone", "tiny", "--patch_size", "32", "--spacing", "[1.0,1.0,2.0]", "--sw_batch_size", "4"]
SAM_UNET_TINY_TRAIN = SAM_UNET_TINY_MODEL + [
    "--num_classes", "3", "--batch_size", "1", "--cache_rate", "0", "--num_workers", "0", "--num_samples", "2",
    "--val_interval", "1", "--progress_bar", "False",
]  # fmt: skip
SAM_UNET_TINY_OVERRIDES = {"backbone": "tiny", "patch_size": 32, "spacing": [1.0, 1.0, 2.0], "sw_batch_size": 4}
SAM_UNET_TINY_TRAIN_OVERRIDES = {
    **SAM_UNET_TINY_OVERRIDES, "num_classes": 3, "batch_size": 1, "cache_rate": 0.0, "num_workers": 0,
    "num_samples": 2, "val_interval": 1, "progress_bar": False,
}  # fmt: skip
SAM_UNET_TINY_META = {
    "inputs.image": {"spatial_shape": [32, 32, 1]},
    "outputs.pred": {"spatial_shape": [32, 32, 1]},
}

#: Prompts written beside each synthetic test image (the prompted bundles' inference input): a 3D box of class 1 of
#: the synthetic label, and one click (voxel coordinates of the loaded image; world coordinates are tested apart).
SYNTHETIC_PROMPTS = [{"boxes": [[4, 4, 1, 30, 28, 10]], "label": 1}, {"points": [[20, 18, 6]], "point_labels": [1]}]


@dataclass(frozen=True)
class TinyBundle:
    """A bundle's tiny settings: command-line overrides (model; training) and the same as typed values."""

    model: list[str]
    train: list[str]
    overrides: dict
    train_overrides: dict
    meta: dict
    builder: str


#: Every bundle of the repository, shrunk to the tiny backbone.
TINY_BUNDLES = {
    "masksam": TinyBundle(TINY_MODEL, TINY_TRAIN, TINY_OVERRIDES, TINY_TRAIN_OVERRIDES, TINY_META, "build_masksam"),
    "ma_sam": TinyBundle(
        MA_SAM_TINY_MODEL,
        MA_SAM_TINY_TRAIN,
        MA_SAM_TINY_OVERRIDES,
        MA_SAM_TINY_TRAIN_OVERRIDES,
        MA_SAM_TINY_META,
        "build_ma_sam",
    ),
    "med_sa": TinyBundle(
        MED_SA_TINY_MODEL,
        MED_SA_TINY_TRAIN,
        MED_SA_TINY_OVERRIDES,
        MED_SA_TINY_TRAIN_OVERRIDES,
        MED_SA_TINY_META,
        "build_med_sa",
    ),
    "sam_unet": TinyBundle(
        SAM_UNET_TINY_MODEL,
        SAM_UNET_TINY_TRAIN,
        SAM_UNET_TINY_OVERRIDES,
        SAM_UNET_TINY_TRAIN_OVERRIDES,
        SAM_UNET_TINY_META,
        "build_sam_unet",
    ),
}


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


def check_net_in_out_and_trace_export(trained: Path, tiny: TinyBundle) -> None:
    """Run the zoo's ``verify_net_in_out`` and ``ckpt_export --use_trace`` on a trained bundle, and check that the
    TorchScript module computes what the inference config's network computes."""
    import torch
    from monai.bundle import ConfigWorkflow

    shape = tiny.meta["inputs.image"]["spatial_shape"]
    run_bundle(
        trained, "verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json",
        "--config_file", "configs/inference.yaml", *tiny.model,
    )  # fmt: skip
    run_bundle(
        trained, "ckpt_export", "network_def", "--filepath", "models/model.ts", "--ckpt_file", "models/model.pt",
        "--meta_file", "configs/metadata.json", "--config_file", "configs/inference.yaml", "--use_trace", "True",
        "--input_shape", json.dumps([1, 1, *shape]), *tiny.model,
    )  # fmt: skip
    scripted = torch.jit.load(str(trained / "models" / "model.ts"))
    workflow = ConfigWorkflow(
        config_file=str(trained / "configs" / "inference.yaml"),
        workflow_type="infer",
        bundle_root=str(trained),  # its initialisation creates <bundle_root>/eval: not in the working directory
        **tiny.overrides,
    )
    workflow.initialize()
    net = workflow.parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(trained / "models" / "model.pt", weights_only=True))
    net.eval()
    x = torch.randn(1, 1, *shape)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from masksam.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_dataset(root, num_cases=4, shape=(40, 36, 12), num_classes=3, num_folds=2, num_test=1)
    for image in (root / "imagesTs").glob("*.nii.gz"):
        image.with_name(image.name.replace(".nii.gz", ".json")).write_text(json.dumps(SYNTHETIC_PROMPTS))
    return root
