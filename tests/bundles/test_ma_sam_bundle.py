# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""The MA-SAM bundle's real configs through ``monai.bundle`` on synthetic NIfTI, tiny backbone."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow

from tests.bundles.conftest import REPO, copy_bundle, run_bundle

pytestmark = pytest.mark.xdist_group("ma_sam_bundle")

#: Tiny MA-SAM on each volume's own grid (the bundle's default spacing: null).
TINY_MODEL = [
    "--backbone", "tiny", "--patch_size", "32", "--num_slices", "3", "--num_classes", "3", "--fact_rank", "4",
    "--adapter_dim", "8",
]  # fmt: skip
TINY_TRAIN = TINY_MODEL + [
    "--cache_rate", "0", "--num_workers", "0", "--num_samples", "2", "--val_interval", "1", "--progress_bar", "False",
    "--warmup_iterations", "2",
]  # fmt: skip
TINY_OVERRIDES = {
    "backbone": "tiny", "patch_size": 32, "num_slices": 3, "num_classes": 3, "fact_rank": 4, "adapter_dim": 8,
}  # fmt: skip
TINY_TRAIN_OVERRIDES = {
    **TINY_OVERRIDES, "cache_rate": 0.0, "num_workers": 0, "num_samples": 2, "val_interval": 1, "progress_bar": False,
    "warmup_iterations": 2,
}  # fmt: skip
TINY_META = {
    "inputs.image": {"spatial_shape": [32, 32, 3]},
    "outputs.pred": {"num_channels": 3, "spatial_shape": [32, 32, 3], "channel_def": {"0": "bg", "1": "a", "2": "b"}},
}
SCHEMA = REPO.parent / "shared" / "monai_meta_schemas" / "meta_schema_20240725.json"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, synthetic_dataset: Path) -> Path:
    """The bundle after 2 epochs of tiny training with `python -m monai.bundle run training`."""
    bundle = copy_bundle("ma_sam", tmp_path_factory.mktemp("bundle"), TINY_META)
    proc = run_bundle(
        bundle, "run", "training", "--config_file", "configs/train.yaml", "--dataset_dir", str(synthetic_dataset),
        "--max_epochs", "2", *TINY_TRAIN,
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert "val_mean_dice" in log
    assert re.search(r"MASAM: [\d.]+M parameters, [\d.]+M trainable", log)
    return bundle


@pytest.mark.skipif(not SCHEMA.exists(), reason=f"offline schema copy not found at {SCHEMA}")
def test_metadata_verifies_against_the_zoo_schema(tmp_path: Path) -> None:
    bundle = copy_bundle("ma_sam", tmp_path)
    proc = run_bundle(bundle, "verify_metadata", "--meta_file", "configs/metadata.json", "--filepath", str(SCHEMA))
    assert "metadata is verified with no error" in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("configs", "workflow_type"),
    [(["train.yaml"], "train"), (["train.yaml", "evaluate.yaml"], "train"), (["inference.yaml"], "infer")],
)
def test_required_properties(tmp_path: Path, synthetic_dataset: Path, configs: list[str], workflow_type: str) -> None:
    bundle = copy_bundle("ma_sam", tmp_path)
    workflow = ConfigWorkflow(
        config_file=[str(bundle / "configs" / c) for c in configs],
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=str(bundle / "configs" / "logging.conf"),
        workflow_type=workflow_type,
        **(TINY_TRAIN_OVERRIDES if workflow_type == "train" else TINY_OVERRIDES),
        dataset_dir=str(synthetic_dataset / ("imagesTs" if workflow_type == "infer" else "")),
        bundle_root=str(bundle),
    )
    workflow.initialize()
    assert not workflow.check_properties()


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
    run_bundle(
        trained, "verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json",
        "--config_file", "configs/inference.yaml", *TINY_MODEL,
    )  # fmt: skip
    run_bundle(
        trained, "ckpt_export", "network_def", "--filepath", "models/model.ts", "--ckpt_file", "models/model.pt",
        "--meta_file", "configs/metadata.json", "--config_file", "configs/inference.yaml", "--use_trace", "True",
        "--input_shape", "[1,1,32,32,3]", *TINY_MODEL,
    )  # fmt: skip
    scripted = torch.jit.load(str(trained / "models" / "model.ts"))
    workflow = ConfigWorkflow(
        config_file=str(trained / "configs" / "inference.yaml"),
        workflow_type="infer",
        bundle_root=str(trained),
        **TINY_OVERRIDES,
    )
    workflow.initialize()
    net = workflow.parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(trained / "models" / "model.pt", weights_only=True))
    net.eval()
    x = torch.randn(1, 1, 32, 32, 3)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), rtol=1e-4, atol=1e-5)


def test_multi_gpu_config_runs_ddp_with_gloo(tmp_path: Path, synthetic_dataset: Path) -> None:
    bundle = copy_bundle("ma_sam", tmp_path)
    proc = run_bundle(
        bundle, "run", "--config_file", "['configs/train.yaml','configs/multi_gpu_train.yaml']",
        "--dataset_dir", str(synthetic_dataset), "--max_epochs", "1", *TINY_TRAIN, torchrun=2,
    )  # fmt: skip
    assert (proc.stdout + proc.stderr).count("training from scratch") == 2, "both ranks start the trainer"
    assert (bundle / "models" / "checkpoint_1.pt").exists()


def test_zoo_export_runs_without_the_installed_package(tmp_path: Path, synthetic_dataset: Path) -> None:
    export = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "zoo_export.py"), "ma_sam", str(tmp_path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    bundle = Path(export.stdout.strip().splitlines()[-1])
    assert "scripts.masksam.networks.build_ma_sam" in (bundle / "configs" / "train.yaml").read_text()
    argv = ["monai.bundle", "run", "--config_file", "configs/train.yaml", "--dataset_dir", str(synthetic_dataset),
            "--max_epochs", "1", *TINY_TRAIN]  # fmt: skip
    code = (
        "import runpy, sys\n"
        "sys.modules['masksam'] = None  # any `import masksam` now raises ImportError\n"
        f"sys.argv = {argv!r}\n"
        "runpy.run_module('monai.bundle', run_name='__main__')\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=bundle, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (bundle / "models" / "model.pt").is_file()
