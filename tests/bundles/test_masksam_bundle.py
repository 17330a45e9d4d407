# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow

from tests.bundles.conftest import (
    TINY_BUNDLES,
    TINY_META,
    TINY_MODEL,
    TINY_TRAIN,
    TINY_TRAIN_OVERRIDES,
    check_net_in_out_and_trace_export,
    copy_bundle,
    run_bundle,
)

pytestmark = pytest.mark.xdist_group("masksam_bundle")


def saved_epoch(state: dict) -> int:
    """Epoch of an ignite trainer state dict (it stores the iteration and the epoch length)."""
    return state["trainer"]["iteration"] // state["trainer"]["epoch_length"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, synthetic_dataset: Path) -> Path:
    """The bundle after 2 epochs of tiny training with `python -m monai.bundle run training`."""
    bundle = copy_bundle("masksam", tmp_path_factory.mktemp("bundle"), TINY_META)
    proc = run_bundle(
        bundle, "run", "training", "--config_file", "configs/train.yaml", "--dataset_dir", str(synthetic_dataset),
        "--max_epochs", "2", *TINY_TRAIN,
    )  # fmt: skip
    assert "val_mean_dice" in proc.stdout + proc.stderr
    assert re.search(r"MaskSAM: [\d.]+M parameters, [\d.]+M trainable", proc.stdout + proc.stderr)
    return bundle


def test_train_saves_plain_state_dicts_and_full_training_state(trained: Path) -> None:
    model = torch.load(trained / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in model.values())
    assert any(k.startswith("network.prompt_generator.") for k in model)
    state = torch.load(trained / "models" / "checkpoint_2.pt", map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "lr_scheduler", "trainer"} <= set(state)
    assert saved_epoch(state) == 2
    assert list((trained / "eval").glob("events.out.tfevents.*")), "TensorBoard logs are written"


def test_evaluate_writes_metrics_and_predictions(trained: Path, synthetic_dataset: Path) -> None:
    run_bundle(
        trained, "run", "--config_file", "['configs/train.yaml','configs/evaluate.yaml']",
        "--dataset_dir", str(synthetic_dataset), "--save_predictions", "True", *TINY_TRAIN,
    )  # fmt: skip
    raw = (trained / "eval" / "val_mean_dice_raw.csv").read_text().splitlines()
    assert raw[0].startswith("filename") and len(raw) == 3, "one row per fold-0 validation case"
    preds = sorted((trained / "eval" / "predictions").glob("*_seg.nii.gz"))
    assert [p.name for p in preds] == ["case_000_seg.nii.gz", "case_002_seg.nii.gz"]
    image = nib.load(synthetic_dataset / "imagesTr" / "case_000.nii.gz")
    pred = nib.load(preds[0])
    assert pred.shape == image.shape and np.allclose(pred.affine, image.affine)


def test_inference_with_another_class_count_names_the_setting(trained: Path, synthetic_dataset: Path) -> None:
    args = list(TINY_MODEL)
    args[args.index("--num_classes") + 1] = "4"  # trained with 3
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.yaml",
        "--dataset_dir", str(synthetic_dataset / "imagesTs"), "--output_dir", str(trained / "wrong_out"), *args,
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=trained, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "trained with num_classes=3, this config has 4 (set --num_classes 3)" in proc.stderr
    assert "model.pt" in proc.stderr
    assert not (trained / "wrong_out").exists() or not any((trained / "wrong_out").iterdir()), "nothing written"


def test_inference_writes_labels_in_the_original_geometry(trained: Path, synthetic_dataset: Path) -> None:
    out = trained / "infer_out"
    run_bundle(
        trained, "run", "--config_file", "configs/inference.yaml", "--dataset_dir", str(synthetic_dataset / "imagesTs"),
        "--output_dir", str(out), "--save_probabilities", "True", *TINY_MODEL,
    )  # fmt: skip
    image = nib.load(synthetic_dataset / "imagesTs" / "case_004.nii.gz")
    seg = nib.load(out / "case_004_seg.nii.gz")
    prob = nib.load(out / "case_004_prob.nii.gz")
    assert seg.shape == image.shape and np.allclose(seg.affine, image.affine)
    assert seg.get_data_dtype() == np.uint8 and set(np.unique(seg.get_fdata())) <= {0, 1, 2}
    assert prob.shape == (*image.shape, 3)
    np.testing.assert_allclose(prob.get_fdata().sum(-1), 1.0, atol=1e-4)


def test_same_file_names_in_two_folders_do_not_collide_and_inputs_are_never_overwritten(
    trained: Path, synthetic_dataset: Path, tmp_path: Path
) -> None:
    import shutil

    inputs = tmp_path / "inputs"
    for sub in ("site_a", "site_b"):
        (inputs / sub).mkdir(parents=True)
        shutil.copy(synthetic_dataset / "imagesTs" / "case_004.nii.gz", inputs / sub / "case.nii.gz")
    datalist = tmp_path / "list.json"
    datalist.write_text('{"testing": [{"image": "site_a/case.nii.gz"}, {"image": "site_b/case.nii.gz"}]}')
    out = tmp_path / "out"
    run_bundle(
        trained, "run", "--config_file", "configs/inference.yaml", "--dataset_dir", str(inputs),
        "--datalist", str(datalist), "--output_dir", str(out), *TINY_MODEL,
    )  # fmt: skip
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.nii.gz")) == [
        "site_a/case_seg.nii.gz",
        "site_b/case_seg.nii.gz",
    ]
    assert sorted(p.name for p in (inputs / "site_a").iterdir()) == ["case.nii.gz"], "inputs are left untouched"

    # Written next to the inputs: the input bytes stay as they were.
    before = (inputs / "site_a" / "case.nii.gz").read_bytes()
    run_bundle(
        trained, "run", "--config_file", "configs/inference.yaml", "--dataset_dir", str(inputs),
        "--datalist", str(datalist), "--output_dir", str(inputs), *TINY_MODEL,
    )  # fmt: skip
    assert sorted(p.name for p in (inputs / "site_a").iterdir()) == ["case.nii.gz", "case_seg.nii.gz"]
    assert (inputs / "site_a" / "case.nii.gz").read_bytes() == before


def test_verify_net_in_out_and_torchscript_export(trained: Path) -> None:
    check_net_in_out_and_trace_export(trained, TINY_BUNDLES["masksam"])


def test_two_seeded_cpu_runs_give_identical_losses(tmp_path: Path, synthetic_dataset: Path) -> None:
    losses = []
    for run in ("a", "b"):
        bundle = copy_bundle("masksam", tmp_path / run)
        proc = run_bundle(
            bundle, "run", "--config_file", "configs/train.yaml", "--dataset_dir", str(synthetic_dataset),
            "--max_epochs", "2", "--seed", "7", *TINY_TRAIN,
        )  # fmt: skip
        losses.append(re.findall(r"train_loss: ([\d.]+)", proc.stdout + proc.stderr))
    assert len(losses[0]) == 4, "2 epochs x 2 training volumes"
    assert losses[0] == losses[1]


def test_mlflow_tracking(tmp_path: Path, synthetic_dataset: Path) -> None:
    pytest.importorskip("mlflow", reason="MLflow tracking needs the `dev` extra (mlflow)")
    bundle = copy_bundle("masksam", tmp_path)
    run_bundle(
        bundle, "run", "--config_file", "configs/train.yaml", "--dataset_dir", str(synthetic_dataset),
        "--max_epochs", "1", "--tracking", "mlflow", *TINY_TRAIN,
    )  # fmt: skip
    assert (bundle / "eval" / "mlruns.db").is_file()
    assert list((bundle / "eval").glob("config_*.json")), "the executed config is logged as an artifact"


def test_resume_after_sigkill(tmp_path: Path, synthetic_dataset: Path) -> None:
    bundle = copy_bundle("masksam", tmp_path)
    args = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/train.yaml",
        "--dataset_dir", str(synthetic_dataset), "--max_epochs", "40", *TINY_TRAIN,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, cwd=bundle, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    models = bundle / "models"
    deadline = time.time() + 300
    while time.time() < deadline and not list(models.glob("checkpoint_[3-9].pt")):
        assert proc.poll() is None, "training ended before it could be interrupted"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = list(models.glob("checkpoint_*.pt"))
    assert len(saved) == 1, f"one checkpoint kept, no partial files: {list(models.iterdir())}"
    state = torch.load(saved[0], map_location="cpu", weights_only=True)  # loads: nothing truncated
    epoch = saved_epoch(state)
    assert epoch >= 3

    # In-process: the handler restores the optimizer state and the epoch exactly.
    workflow = ConfigWorkflow(
        config_file=str(bundle / "configs" / "train.yaml"),
        workflow_type="train",
        **TINY_TRAIN_OVERRIDES,
        bundle_root=str(bundle),
        dataset_dir=str(synthetic_dataset),
        max_epochs=epoch + 1,
    )
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    handler = next(h for h in workflow.parser.get_parsed_content("train#handlers") if hasattr(h, "load"))
    handler.load(trainer)
    assert trainer.state.epoch == epoch
    optimizer = workflow.parser.get_parsed_content("optimizer")
    loaded = optimizer.state_dict()["state"]
    assert loaded.keys() == state["optimizer"]["state"].keys()
    for k in loaded:
        torch.testing.assert_close(loaded[k]["exp_avg"], state["optimizer"]["state"][k]["exp_avg"])

    # And the real command continues from the saved epoch to the end.
    done = run_bundle(
        bundle, "run", "--config_file", "configs/train.yaml", "--dataset_dir", str(synthetic_dataset),
        "--max_epochs", str(epoch + 1), *TINY_TRAIN,
    )  # fmt: skip
    assert re.search(rf"resumed from .*checkpoint_{epoch}\.pt: epoch {epoch}", done.stdout + done.stderr)
    final = torch.load(models / f"checkpoint_{epoch + 1}.pt", map_location="cpu", weights_only=True)
    assert saved_epoch(final) == epoch + 1


def test_validate_data_command_and_bad_labels_stop_training(tmp_path: Path, synthetic_dataset: Path) -> None:
    import json
    import shutil

    bundle = copy_bundle("masksam", tmp_path)
    run_bundle(bundle, "run", "validate_data", "--config_file", "configs/train.yaml",
               "--dataset_dir", str(synthetic_dataset), "--num_classes", "3")  # fmt: skip
    bad = tmp_path / "bad_data"
    shutil.copytree(synthetic_dataset, bad)
    label = nib.load(bad / "labelsTr" / "case_001.nii.gz")
    data = np.asarray(label.dataobj).copy()
    data[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(data, label.affine), bad / "labelsTr" / "case_001.nii.gz")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "monai.bundle", "run"]
    report = subprocess.run(
        [*base, "validate_data", "--config_file", "configs/train.yaml", "--dataset_dir", str(bad), *TINY_TRAIN],
        cwd=bundle, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert report.returncode != 0
    assert "case_001.nii.gz [label]: label values [7] are outside [0, 3)" in report.stdout + report.stderr
    train = subprocess.run(
        [*base, "--config_file", "configs/train.yaml", "--dataset_dir", str(bad), "--max_epochs", "1", *TINY_TRAIN],
        cwd=bundle, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert train.returncode != 0
    assert "label values [7] are outside [0, 3)" in train.stderr
    assert not (bundle / "models" / "checkpoint_1.pt").exists(), "no training step ran on bad data"
    assert json.loads((bad / "dataset.json").read_text())["training"], "inputs untouched"
