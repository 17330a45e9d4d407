# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""The Med-SA bundle's real configs through ``monai.bundle`` on synthetic NIfTI, tiny backbone."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow

from masksam.inferers import PromptedVolumePredictor
from tests.bundles.conftest import TINY_BUNDLES, copy_bundle, run_bundle

TINY = TINY_BUNDLES["med_sa"]

pytestmark = pytest.mark.xdist_group("med_sa_bundle")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, synthetic_dataset: Path) -> Path:
    """The bundle after 2 epochs of tiny training with `python -m monai.bundle run training`."""
    bundle = copy_bundle("med_sa", tmp_path_factory.mktemp("bundle"), TINY.meta)
    proc = run_bundle(
        bundle, "run", "training", "--config_file", "configs/train.yaml", "--dataset_dir", str(synthetic_dataset),
        "--max_epochs", "2", *TINY.train,
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert "val_mean_dice" in log
    assert re.search(r"MedSA: [\d.]+M parameters, [\d.]+M trainable", log)
    assert (bundle / "models" / "model.pt").is_file()
    return bundle


def _network(bundle: Path) -> torch.nn.Module:
    workflow = ConfigWorkflow(
        config_file=str(bundle / "configs" / "inference.yaml"),
        workflow_type="infer",
        bundle_root=str(bundle),
        **TINY.overrides,
    )
    workflow.initialize()
    net = workflow.parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    return net.eval()


def test_evaluation_names_the_prompt_protocol_in_its_csv(trained: Path, synthetic_dataset: Path) -> None:
    run_bundle(
        trained, "run", "evaluating", "--config_file", "['configs/train.yaml','configs/evaluate.yaml']",
        "--dataset_dir", str(synthetic_dataset), *TINY.train, "--prompt_protocol", "1 click",
    )  # fmt: skip
    with open(trained / "eval" / "val_mean_dice_raw.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["filename", "class0", "class1", "mean"]  # every structure of the labels, prompted
    assert len(rows) > 1 and all(row[0].endswith(".nii.gz [1 click]") for row in rows[1:])


def test_inference_writes_one_label_map_per_prompted_structure_in_the_input_grid(
    trained: Path, synthetic_dataset: Path, tmp_path: Path
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    source = next((synthetic_dataset / "imagesTs").glob("*.nii.gz"))
    image = images / source.name
    shutil.copy(source, image)
    ref = nib.load(image)
    # Structure 3 by a box in world coordinates (millimetres through the image's affine), structure 7 by two clicks.
    corners = nib.affines.apply_affine(ref.affine, np.array([[4.0, 4.0, 1.0], [30.0, 28.0, 10.0]]))
    prompts = [
        {"space": "world", "boxes": [corners.min(0).tolist() + corners.max(0).tolist()], "label": 3},
        {"points": [[20, 18, 6], [8, 30, 6]], "point_labels": [1, 0], "label": 7},
    ]
    image.with_name(source.name.replace(".nii.gz", ".json")).write_text(json.dumps(prompts))
    out = tmp_path / "out"
    run_bundle(
        trained, "run", "--config_file", "configs/inference.yaml", "--dataset_dir", str(images),
        "--output_dir", str(out), "--progress_bar", "False", *TINY.model,
    )  # fmt: skip
    stem = source.name.replace(".nii.gz", "")
    assert sorted(p.name for p in out.iterdir()) == [f"{stem}_structure3_seg.nii.gz", f"{stem}_structure7_seg.nii.gz"]
    for value in (3, 7):
        seg = nib.load(out / f"{stem}_structure{value}_seg.nii.gz")
        assert seg.shape == ref.shape and np.allclose(seg.affine, ref.affine, atol=1e-4)
        assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, value}
    clicked = np.asarray(nib.load(out / f"{stem}_structure7_seg.nii.gz").dataobj)
    assert not clicked[..., :5].any() and not clicked[..., 8:].any(), "clicks on slice 6 segment only near slice 6"


def test_a_prompt_outside_its_image_stops_inference_with_the_file_and_prompt(
    trained: Path, synthetic_dataset: Path, tmp_path: Path
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    source = next((synthetic_dataset / "imagesTs").glob("*.nii.gz"))
    shutil.copy(source, images / source.name)
    bad = images / source.name.replace(".nii.gz", ".json")
    bad.write_text(json.dumps({"points": [[20, 18, 60]], "point_labels": [1]}))
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.yaml", "--dataset_dir",
           str(images), "--output_dir", str(tmp_path / "out"), *TINY.model]  # fmt: skip
    proc = subprocess.run(cmd, cwd=trained, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert re.search(
        rf"{re.escape(str(bad))}: \$\.points\[0\]: voxel coordinate \(20.0, 18.0, 60.0\) is outside", proc.stderr
    )
    (images / bad.name).unlink()
    proc = subprocess.run(cmd, cwd=trained, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "have no prompt file" in proc.stderr and bad.name in proc.stderr


def test_network_shapes_and_the_interactive_predictor_with_trained_weights(trained: Path) -> None:
    """The zoo's verify_net_in_out cannot pass prompts: the same check with them, and the documented predictor."""
    net = _network(trained)
    meta = json.loads((trained / "configs" / "metadata.json").read_text())["network_data_format"]
    shape = meta["inputs"]["image"]["spatial_shape"]
    coords = torch.tensor([[4.0, 4.0], [20.0, 24.0]]).expand(shape[-1], 2, 2)[None]
    labels = torch.tensor([2, 3]).expand(shape[-1], 2)[None]
    x = torch.rand(1, 1, *shape)
    with torch.no_grad():
        out = net(x, coords, labels)
    assert out.shape == (1, meta["outputs"]["pred"]["num_channels"], *shape)
    predictor = PromptedVolumePredictor(net)
    predictor.set_volume(torch.rand(1, shape[0], shape[1], 5))  # any number of slices: stacks of num_slices
    mask = predictor.predict(coords[0, :1].expand(5, 2, 2), labels[0, :1].expand(5, 2))
    assert mask.shape == (1, shape[0], shape[1], 5)
