# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""The SAM-UNet bundle's real configs through ``monai.bundle`` on synthetic NIfTI, tiny backbone."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow
from monai.data import list_data_collate

from masksam.inferers import PromptedVolumePredictor
from masksam.networks.med_sa import NO_PROMPT_LOGIT
from tests.bundles.conftest import TINY_BUNDLES, copy_bundle, run_bundle

TINY = TINY_BUNDLES["sam_unet"]

pytestmark = pytest.mark.xdist_group("sam_unet_bundle")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, synthetic_dataset: Path) -> Path:
    """The bundle after 2 epochs of tiny training with `python -m monai.bundle run training`."""
    bundle = copy_bundle("sam_unet", tmp_path_factory.mktemp("bundle"), TINY.meta)
    proc = run_bundle(
        bundle, "run", "training", "--config_file", "configs/train.yaml", "--dataset_dir", str(synthetic_dataset),
        "--max_epochs", "2", *TINY.train,
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert "val_mean_dice" in log
    assert re.search(r"SamUNet: [\d.]+M parameters, [\d.]+M trainable", log)
    assert (bundle / "models" / "model.pt").is_file()
    return bundle


def _workflow(bundle: Path, config: str, workflow_type: str, **overrides: object) -> ConfigWorkflow:
    workflow = ConfigWorkflow(
        config_file=str(bundle / "configs" / config), workflow_type=workflow_type, bundle_root=str(bundle), **overrides
    )
    workflow.initialize()
    return workflow


def _network(bundle: Path) -> torch.nn.Module:
    net = _workflow(bundle, "inference.yaml", "infer", **TINY.overrides).parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    return net.eval()


def test_training_samples_are_single_slices_each_with_a_jittered_box_of_one_structure(
    tmp_path: Path, synthetic_dataset: Path
) -> None:
    """The recipe: num_samples slices per volume through the labels, box prompts only, jitter at most 5 voxels,
    focal + 20 x Dice, the learning rate halved after epochs 5 and 10."""
    bundle = copy_bundle("sam_unet", tmp_path)
    parser = _workflow(bundle, "train.yaml", "train", dataset_dir=str(synthetic_dataset), **TINY.train_overrides).parser
    loss = parser.get_parsed_content("loss")
    assert isinstance(loss, torch.nn.Module) and type(loss).__name__ == "DiceFocalLoss"
    assert (loss.lambda_dice, loss.lambda_focal, loss.focal.gamma, loss.focal.alpha) == (20.0, 1.0, 2.0, 0.25)
    scheduler = parser.get_parsed_content("lr_scheduler")
    assert dict(scheduler.milestones) == {5: 1, 10: 1} and scheduler.gamma == 0.5
    assert parser.get_parsed_content("max_epochs") == 15 and parser.get_parsed_content("num_slices") == 1
    item = parser.get_parsed_content("train#dataset").data[0]
    preprocessing = parser.get_parsed_content("train#preprocessing")
    preprocessing.set_random_state(seed=0)
    moves = []
    for _ in range(3):
        samples = preprocessing(item)
        assert len(samples) == TINY.train_overrides["num_samples"]
        for sample in samples:
            size = TINY.overrides["patch_size"]
            assert sample["image"].shape == (1, size, size, 1)
            target = sample["label"][0, ..., 0] > 0
            assert target.any() and set(torch.unique(sample["label"]).tolist()) <= {0.0, 1.0}
            assert sample["prompt_labels"].tolist() == [[2, 3]]  # a box, no click slot
            ii, jj = torch.nonzero(target, as_tuple=True)
            tight = torch.stack([ii.min(), jj.min(), ii.max(), jj.max()]).float()
            moves.append((sample["prompt_coords"].reshape(4) - tight).abs().max())
    assert 0 < max(moves) <= 5.0, "boxes are jittered, by at most box_noise_max voxels"


def test_every_trainable_parameter_gets_a_gradient_from_a_box_prompted_step(
    tmp_path: Path, synthetic_dataset: Path
) -> None:
    """DDP without unused-parameter search (multi_gpu_train.yaml) fails from the second step otherwise."""
    bundle = copy_bundle("sam_unet", tmp_path)
    parser = _workflow(bundle, "train.yaml", "train", dataset_dir=str(synthetic_dataset), **TINY.train_overrides).parser
    net, loss = parser.get_parsed_content("network"), parser.get_parsed_content("loss")
    item = parser.get_parsed_content("train#dataset").data[0]
    batch = list_data_collate([parser.get_parsed_content("train#preprocessing")(item)])
    inputs, target, args, kwargs = parser.get_parsed_content("train#prepare_batch")(batch, torch.device("cpu"))
    loss(parser.get_parsed_content("train#inferer")(inputs, net, *args, **kwargs), target).backward()
    trainable = [name for name, p in net.named_parameters() if p.requires_grad]
    assert trainable and [name for name, p in net.named_parameters() if p.requires_grad and p.grad is None] == []


def test_evaluation_names_the_box_protocol_in_its_csv(trained: Path, synthetic_dataset: Path) -> None:
    run_bundle(
        trained, "run", "evaluating", "--config_file", "['configs/train.yaml','configs/evaluate.yaml']",
        "--dataset_dir", str(synthetic_dataset), *TINY.train,
    )  # fmt: skip
    with open(trained / "eval" / "val_mean_dice_raw.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["filename", "class0", "class1", "mean"]  # every structure of the labels, prompted
    assert len(rows) > 1 and all(row[0].endswith(".nii.gz [box]") for row in rows[1:])


def test_inference_writes_one_label_map_per_boxed_structure_in_the_input_grid(
    trained: Path, synthetic_dataset: Path, tmp_path: Path
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    source = next((synthetic_dataset / "imagesTs").glob("*.nii.gz"))
    image = images / source.name
    shutil.copy(source, image)
    ref = nib.load(image)
    # Structure 3 by a 3D box in world coordinates (slices 2..9), structure 7 by the box of slice 6 in voxels.
    corners = nib.affines.apply_affine(ref.affine, np.array([[4.0, 4.0, 2.0], [30.0, 28.0, 9.0]]))
    prompts = [
        {"space": "world", "boxes": [corners.min(0).tolist() + corners.max(0).tolist()], "label": 3},
        {"boxes": [[8, 6, 6, 24, 30, 6]], "label": 7},
    ]
    image.with_name(source.name.replace(".nii.gz", ".json")).write_text(json.dumps(prompts))
    out = tmp_path / "out"
    run_bundle(
        trained, "run", "--config_file", "configs/inference.yaml", "--dataset_dir", str(images),
        "--output_dir", str(out), "--progress_bar", "False", *TINY.model,
    )  # fmt: skip
    stem = source.name.replace(".nii.gz", "")
    assert sorted(p.name for p in out.iterdir()) == [f"{stem}_structure3_seg.nii.gz", f"{stem}_structure7_seg.nii.gz"]
    for value, (z0, z1) in ((3, (2, 9)), (7, (6, 6))):
        seg = nib.load(out / f"{stem}_structure{value}_seg.nii.gz")
        assert seg.shape == ref.shape and np.allclose(seg.affine, ref.affine, atol=1e-4)
        data = np.asarray(seg.dataobj)
        assert set(np.unique(data).tolist()) <= {0, value}
        assert not data[..., :z0].any() and not data[..., z1 + 1 :].any(), f"structure {value}: outside its box"


def test_a_3d_box_prompts_every_slice_it_spans_and_no_other(trained: Path, synthetic_dataset: Path) -> None:
    """The inference pipeline gives each slice of a 3D box its in-plane box, also where the structure is absent,
    decodes those slices, and leaves the slices outside the box empty."""
    workflow = _workflow(
        trained, "inference.yaml", "infer", dataset_dir=str(synthetic_dataset / "imagesTs"), **TINY.overrides
    )
    parser = workflow.parser
    item = json.loads((synthetic_dataset / "dataset.json").read_text())["training"][0]
    label = np.asarray(nib.load(synthetic_dataset / item["label"]).dataobj)
    value = int(label.max())
    shown = np.nonzero((label == value).any(axis=(0, 1)))[0]
    ii, jj, _ = np.nonzero(label == value)
    z0, z1 = int(shown[0]) - 2, int(shown[-1]) + 2  # two slices without the structure at each end
    assert z0 > 0 and z1 < label.shape[-1] - 1, "the synthetic structure leaves room for slices outside the box"
    box = {"boxes": [[int(ii.min()), int(jj.min()), z0, int(ii.max()), int(jj.max()), z1]], "label": value}
    data = parser.get_parsed_content("preprocessing")(
        {"image": str(synthetic_dataset / item["image"]), "prompts": [box]}
    )
    depth = data["image"].shape[-1]
    assert depth == label.shape[-1]  # the bundle's spacing keeps the synthetic slices
    boxed = torch.zeros(depth, dtype=torch.bool)
    boxed[z0 : z1 + 1] = True
    labels = data["prompt_labels"][0]  # (D, P): structure 0
    assert labels[boxed].tolist() == [[2, 3]] * int(boxed.sum())
    assert (labels[~boxed] == -1).all()
    net = _network(trained)
    inferer = parser.get_parsed_content("inferer")
    with torch.no_grad():
        logits = inferer(data["image"][None], net, data["prompt_coords"][None], data["prompt_labels"][None])
    assert logits.shape == (1, 1, *data["image"].shape[1:])
    decoded = (logits[0, 0] != NO_PROMPT_LOGIT).flatten(0, 1).any(dim=0)
    assert decoded.tolist() == boxed.tolist()
    assert not (logits[0, 0][..., ~boxed] > 0).any()


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
    predictor.set_volume(torch.rand(1, shape[0], shape[1], 5))  # any number of slices, one at a time
    mask = predictor.predict(coords[0, :1].expand(5, 2, 2), labels[0, :1].expand(5, 2))
    assert mask.shape == (1, shape[0], shape[1], 5)
