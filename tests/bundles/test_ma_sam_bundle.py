# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""The MA-SAM bundle's real configs through ``monai.bundle`` on synthetic NIfTI, tiny backbone."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow

from tests.bundles.conftest import TINY_BUNDLES, check_net_in_out_and_trace_export, copy_bundle, run_bundle

TINY = TINY_BUNDLES["ma_sam"]
TINY_MODEL, TINY_TRAIN, TINY_OVERRIDES, TINY_TRAIN_OVERRIDES = (
    TINY.model,
    TINY.train,
    TINY.overrides,
    TINY.train_overrides,
)

pytestmark = pytest.mark.xdist_group("ma_sam_bundle")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, synthetic_dataset: Path) -> Path:
    """The bundle after 2 epochs of tiny training with `python -m monai.bundle run training`."""
    bundle = copy_bundle("ma_sam", tmp_path_factory.mktemp("bundle"), TINY.meta)
    proc = run_bundle(
        bundle, "run", "training", "--config_file", "configs/train.yaml", "--dataset_dir", str(synthetic_dataset),
        "--max_epochs", "2", *TINY_TRAIN,
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert "val_mean_dice" in log
    assert re.search(r"MASAM: [\d.]+M parameters, [\d.]+M trainable", log)
    return bundle


def test_learning_rate_warms_up_then_decays_per_iteration(tmp_path: Path, synthetic_dataset: Path) -> None:
    """The paper's schedule: linear warm-up over warmup_iterations, then poly decay to the last iteration."""
    bundle = copy_bundle("ma_sam", tmp_path)
    workflow = ConfigWorkflow(
        config_file=str(bundle / "configs" / "train.yaml"),
        workflow_type="train",
        **{**TINY_TRAIN_OVERRIDES, "warmup_iterations": 4, "max_epochs": 5, "learning_rate": 1.0},
        dataset_dir=str(synthetic_dataset),
        bundle_root=str(bundle),
    )
    workflow.initialize()
    scheduler = workflow.parser.get_parsed_content("lr_scheduler")
    optimizer = workflow.parser.get_parsed_content("optimizer")
    total = 5 * len(workflow.parser.get_parsed_content("train#dataloader"))  # 5 epochs of 2 volumes
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    np.testing.assert_allclose(lrs[:5], [0.25, 0.5, 0.75, 1.0, 1.0])
    np.testing.assert_allclose(lrs[5], (1 - 1 / (total - 4)) ** 7)
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:], strict=False))


def test_train_evaluate_and_infer_in_the_original_geometry(trained: Path, synthetic_dataset: Path) -> None:
    model = torch.load(trained / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert any(k.startswith("decoder.hypernetworks.") for k in model)
    state = torch.load(trained / "models" / "checkpoint_2.pt", map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "lr_scheduler", "trainer"} <= set(state)

    run_bundle(
        trained, "run", "--config_file", "['configs/train.yaml','configs/evaluate.yaml']",
        "--dataset_dir", str(synthetic_dataset), "--save_predictions", "True", *TINY_TRAIN,
    )  # fmt: skip
    raw = (trained / "eval" / "val_mean_dice_raw.csv").read_text().splitlines()
    assert raw[0].startswith("filename") and len(raw) == 3, "one row per fold-0 validation case"
    pred = nib.load(trained / "eval" / "predictions" / "case_000_seg.nii.gz")
    image = nib.load(synthetic_dataset / "imagesTr" / "case_000.nii.gz")
    assert pred.shape == image.shape and np.allclose(pred.affine, image.affine)

    out = trained / "infer_out"
    run_bundle(
        trained, "run", "--config_file", "configs/inference.yaml", "--dataset_dir", str(synthetic_dataset / "imagesTs"),
        "--output_dir", str(out), "--save_probabilities", "True", *TINY_MODEL,
    )  # fmt: skip
    image = nib.load(synthetic_dataset / "imagesTs" / "case_004.nii.gz")
    seg, prob = nib.load(out / "case_004_seg.nii.gz"), nib.load(out / "case_004_prob.nii.gz")
    assert seg.shape == image.shape and np.allclose(seg.affine, image.affine)
    assert set(np.unique(seg.get_fdata())) <= {0, 1, 2}
    assert prob.shape == (*image.shape, 3)
    np.testing.assert_allclose(prob.get_fdata().sum(-1), 1.0, atol=1e-4)


def test_inference_with_another_slice_count_names_the_setting(trained: Path, synthetic_dataset: Path) -> None:
    args = list(TINY_MODEL)
    args[args.index("--num_slices") + 1] = "5"  # trained with 3
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.yaml",
        "--dataset_dir", str(synthetic_dataset / "imagesTs"), "--output_dir", str(trained / "wrong_out"), *args,
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=trained, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "trained with num_slices=3, this config has 5 (set --num_slices 3)" in proc.stderr


def test_verify_net_in_out_and_torchscript_export(trained: Path) -> None:
    check_net_in_out_and_trace_export(trained, TINY_BUNDLES["ma_sam"])
