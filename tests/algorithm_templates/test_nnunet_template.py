# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""The ``nnunet`` Auto3DSeg template (nnU-Net v2, extra ``nnunet``) beside ``masksam`` in MONAI's AutoRunner, on CPU.

nnU-Net runs with a short trainer (``tests/algorithm_templates/nnunet_trainers.py``: a few iterations, small patches
and features). Tests that run nnU-Net are skipped when ``nnunetv2`` is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from monai.apps.auto3dseg import AutoRunner, BundleGen, import_bundle_algo_history
from monai.utils.enums import AlgoKeys

from masksam.auto3dseg import (
    NnunetAlgo,
    NnunetPaths,
    algo_entry,
    dataset_folder_name,
    folds_to_splits,
    nnunet_data,
    nnunet_environment,
)
from tests.algorithm_templates.conftest import (
    REPO,
    SUBPROCESS_ENV,
    generate,
    make_template_dataset,
    read_yaml,
)

pytestmark = pytest.mark.xdist_group("nnunet_template")

NO_NNUNET = "nnU-Net v2 is the optional extra 'nnunet' (pip install -e '.[nnunet]'; make venv installs it)"
TRAINER = "tests.algorithm_templates.nnunet_trainers.nnUNetTrainerTiny"
#: input.yaml section of nnunet: the short trainer, one process, augmentation in the training process, CPU.
NNUNET_TINY = {"trainer_class": TRAINER, "num_processes": 1, "num_workers": 0, "device": "cpu"}
#: input.yaml section of masksam shrinking its model (as in test_masksam_template.py).
MASKSAM_TINY = {
    "backbone": "tiny", "patch_size": 32, "num_slices": 4, "generator_widths": [32, 16, 16, 8, 8],
    "mask_head_channels": 8, "num_workers": 0, "cache_rate": 0.0, "num_samples": 1, "use_tensorboard": False,
}  # fmt: skip
DATASET = "Dataset001_Auto3DSeg"


@pytest.fixture(scope="module")
def nnunetv2():
    return pytest.importorskip("nnunetv2", reason=NO_NNUNET)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_template_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def work_dir(nnunetv2, tmp_path_factory: pytest.TempPathFactory, dataset: Path) -> Path:
    """AutoRunner with masksam and nnunet registered by dict: analysis, generation (nnU-Net's conversion, plans and
    preprocessing), 1-epoch training of fold 0 of each, AlgoEnsembleBestN of both on the test images."""
    work = tmp_path_factory.mktemp("work")
    inputs = {
        "name": "synthetic", "task": "segmentation", "modality": "CT", "datalist": str(dataset / "dataset.json"),
        "dataroot": str(dataset), "masksam": MASKSAM_TINY, "nnunet": NNUNET_TINY,
    }  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:  # the training subprocesses import the short trainer from tests/
        patch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
        runner = AutoRunner(work_dir=str(work), input=inputs, algos={**algo_entry("masksam"), **algo_entry("nnunet")})
        runner.set_device_info(cmd_prefix=sys.executable)
        runner.set_analyze_params({"device": "cpu", "worker": 0, "do_ccp": False})
        runner.set_num_fold(1)
        runner.set_training_params({"num_epochs": 1, "num_epochs_per_validation": 1})
        runner.set_ensemble_method("AlgoEnsembleBestN", n_best=2)
        runner.run()
    return work


def fold_folder(work_dir: Path, fold: int = 0) -> Path:
    return (
        work_dir / f"nnunet_{fold}" / "model" / DATASET / "nnUNetTrainerTiny__nnUNetPlans__3d_fullres" / f"fold_{fold}"
    )


@pytest.mark.slow
def test_autorunner_trains_masksam_and_nnunet_and_ensembles_them_in_each_images_grid(
    work_dir: Path, dataset: Path
) -> None:
    config = read_yaml(work_dir / "nnunet_0" / "configs" / "hyper_parameters.yaml")
    assert config["fold"] == 0 and config["configuration"] == "3d_fullres" and config["plans"] == "nnUNetPlans"
    assert config["num_classes"] == 3 and config["modality"] == "ct" and config["trainer_class"] == TRAINER
    assert config["datalist"] == str(work_dir / "dataset.json") and config["dataset_dir"] == str(dataset)

    fold = fold_folder(work_dir)
    assert (fold / "checkpoint_final.pth").is_file(), "nnU-Net's trainer trained the fold (the short trainer's folder)"
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert "Epoch 0" in log and "Epoch 1" not in log, "num_epochs=1 (Auto3DSeg's name) overrides the trainer's 2"
    nnunet_dice = json.loads((fold / "validation" / "summary.json").read_text())["foreground_mean"]["Dice"]
    progress = yaml.safe_load((work_dir / "nnunet_0" / "model" / "progress.yaml").read_text())
    assert progress[-1]["best_avg_dice_score"] == pytest.approx(nnunet_dice), "nnU-Net's own validation of the fold"
    for name, target in (("masksam_0", "algo.MasksamAlgo"), ("nnunet_0", "nnunet_algo.NnunetAlgo")):
        saved = json.loads((work_dir / name / "algo_object.json").read_text())
        assert saved["_target_"] == f"masksam.auto3dseg.{target}" and 0.0 <= saved["best_metric"] <= 1.0

    history = {h[AlgoKeys.ID]: h[AlgoKeys.ALGO] for h in import_bundle_algo_history(str(work_dir), only_trained=True)}
    assert isinstance(history["nnunet_0"], NnunetAlgo)
    outputs = {p.name: p for p in (work_dir / "ensemble_output").rglob("*_ensemble.nii.gz")}
    assert sorted(outputs) == ["case_004_ensemble.nii.gz", "case_005_ensemble.nii.gz"]
    for name, path in outputs.items():
        image_path = dataset / "imagesTs" / name.replace("_ensemble", "")
        image, seg = nib.load(image_path), nib.load(path)
        assert seg.shape == image.shape and np.allclose(seg.affine, image.affine)
        probs = [history[a].predict([{"image": str(image_path)}])[0] for a in ("masksam_0", "nnunet_0")]
        expected = torch.stack(probs).mean(0).argmax(0).numpy()
        np.testing.assert_array_equal(np.asarray(seg.dataobj), expected, err_msg="the mean of both algorithms")


@pytest.mark.slow
def test_conversion_keeps_images_labels_spacing_and_folds(work_dir: Path, dataset: Path) -> None:
    raw = work_dir / "nnunet_data" / "nnUNet_raw" / DATASET
    datalist = json.loads((work_dir / "dataset.json").read_text())["training"]
    converted = json.loads((raw / "datalist.json").read_text())["training"]
    assert [c["image"] for c in converted] == [d["image"] for d in datalist]
    for item, case in zip(datalist, converted, strict=True):
        for key, file in (("image", f"imagesTr/{case['new_name']}_0000.nii.gz"), ("label", f"labelsTr/{case['new_name']}.nii.gz")):  # fmt: skip
            original, copy = nib.load(dataset / item[key]), nib.load(raw / file)
            np.testing.assert_array_equal(np.asarray(copy.dataobj), np.asarray(original.dataobj), err_msg=file)
            np.testing.assert_allclose(copy.affine, original.affine, err_msg=file)  # hence the spacing
            assert copy.header.get_zooms() == pytest.approx(original.header.get_zooms())
    info = json.loads((raw / "dataset.json").read_text())
    assert info["channel_names"] == {"0": "CT"} and info["labels"] == {"background": 0, "class1": 1, "class2": 2}
    splits = json.loads((work_dir / "nnunet_data" / "nnUNet_preprocessed" / DATASET / "splits_final.json").read_text())
    by_fold = [
        sorted(c["new_name"] for c, d in zip(converted, datalist, strict=True) if d["fold"] == f) for f in (0, 1)
    ]
    assert [sorted(s["val"]) for s in splits] == by_fold
    assert [sorted(s["train"]) for s in splits] == by_fold[::-1]


@pytest.mark.slow
def test_infer_class_gives_nnunet_probabilities_in_the_image_grid_with_one_predictor(
    nnunetv2, work_dir: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    built: list[int] = []
    init = nnUNetPredictor.__init__

    def counting_init(self, *args, **kwargs):
        built.append(1)
        init(self, *args, **kwargs)

    monkeypatch.setattr(nnUNetPredictor, "__init__", counting_init)
    (algo,) = [h[AlgoKeys.ALGO] for h in import_bundle_algo_history(str(work_dir)) if h[AlgoKeys.ID] == "nnunet_0"]
    images = sorted((dataset / "imagesTs").glob("*.nii.gz"))  # case_005: flipped x, 0.8 x 1.2 x 2.5 mm
    params = {"rank": 0, "image_save_func": {"_target_": "SaveImage"}, "n_best": 2}  # what the ensembler passes
    probs = [algo.predict([{"image": str(f)}], predict_params=params)[0] for f in images]
    assert len(built) == 1, "nnU-Net's predictor is built once for all images"
    predictor = algo.get_inferer(**params).predictor
    for prob, path in zip(probs, images, strict=True):
        image = nib.load(path)
        assert prob.shape == (3, *image.shape) and prob.dtype == torch.float32
        assert np.allclose(prob.affine.numpy(), image.affine) and prob.meta["filename_or_obj"] == str(path)
        assert prob.min() >= 0
        torch.testing.assert_close(prob.sum(0), torch.ones(image.shape), atol=1e-4, rtol=0)
        # nnU-Net's own way: its reader (SimpleITK's z, y, x order), its predictor; ours comes back in x, y, z
        data, props = SimpleITKIO().read_images([str(path)])
        _, reference = predictor.predict_single_npy_array(data, {"spacing": props["spacing"]}, None, None, True)
        np.testing.assert_allclose(prob.numpy(), np.asarray(reference).transpose(0, 3, 2, 1), atol=1e-5)


@pytest.mark.slow
def test_later_folds_reuse_the_plans_and_preprocessing(
    work_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fold 1 generated after fold 0: nothing is converted, planned or preprocessed again."""
    marker = work_dir / "nnunet_data" / "nnUNet_preprocessed" / DATASET / nnunet_data.NNUNET_SOURCE_FILE
    before = marker.read_text()

    def fail(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(nnunet_data, "convert_datalist", fail)
    algo, config = generate(NnunetAlgo, "nnunet", work_dir, work_dir / "datastats.yaml", work_dir / "input.yaml", 1)
    assert config["fold"] == 1 and config["plans"] == "nnUNetPlans" and config["trainer_class"] == TRAINER
    assert marker.read_text() == before
    with pytest.raises(ValueError, match="configuration.*3d_lowres.*'2d', '3d_fullres'"):
        algo.export_to_disk(
            str(tmp_path), "nnunet_lowres", nnunet_dir=str(marker.parents[2]), configuration="3d_lowres"
        )


@pytest.mark.slow
def test_validate_script_repeats_nnunets_validation(work_dir: Path) -> None:
    algo = work_dir / "nnunet_0"
    env = {**SUBPROCESS_ENV, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run(
        [sys.executable, str(algo / "scripts" / "validate.py"), "run",
         f"--config_file={algo / 'configs' / 'hyper_parameters.yaml'}", "--num_epochs_per_validation=1"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    best = yaml.safe_load((algo / "model" / "progress.yaml").read_text())[-1]["best_avg_dice_score"]
    assert float(proc.stdout.strip().splitlines()[-1]) == pytest.approx(best, abs=1e-6)


@pytest.mark.slow
def test_registration_by_templates_folder(work_dir: Path, tmp_path: Path) -> None:
    """The template dropped beside other templates: BundleGen derives ``nnunet.scripts.algo.NnunetAlgo``."""
    templates = tmp_path / "templates"
    shutil.copytree(REPO / "algorithm_templates" / "nnunet", templates / "nnunet")
    inputs = read_yaml(work_dir / "input.yaml")
    inputs["nnunet"] = {**inputs["nnunet"], "nnunet_dir": str(work_dir / "nnunet_data")}  # fold 0's nnU-Net data
    (tmp_path / "input.yaml").write_text(yaml.safe_dump(inputs))
    out = tmp_path / "work"
    gen = BundleGen(
        algo_path=str(out), algos="nnunet", templates_path_or_url=str(templates),
        data_stats_filename=str(work_dir / "datastats.yaml"), data_src_cfg_name=str(tmp_path / "input.yaml"),
    )  # fmt: skip
    gen.generate(str(out), num_fold=1)
    (item,) = import_bundle_algo_history(str(out), only_trained=False)
    assert isinstance(item[AlgoKeys.ALGO], NnunetAlgo) and item[AlgoKeys.ID] == "nnunet_0"
    config = read_yaml(out / "nnunet_0" / "configs" / "hyper_parameters.yaml")
    assert config["plans"] == "nnUNetPlans" and config["trainer_class"] == TRAINER


def test_folds_become_nnunet_splits() -> None:
    items = [{"fold": f} for f in (1, 0, 1, 2, 0)]
    splits = folds_to_splits(items, ["a", "b", "c", "d", "e"])
    assert splits == [
        {"train": ["a", "c", "d"], "val": ["b", "e"]},
        {"train": ["b", "d", "e"], "val": ["a", "c"]},
        {"train": ["a", "b", "c", "e"], "val": ["d"]},
    ]
    with pytest.raises(ValueError, match=r"list.json: folds must be 0..n-1.*\[0, 2\]"):
        folds_to_splits([{"fold": 0}, {"fold": 2}], ["a", "b"], "list.json")


def test_nnunet_environment_is_set_for_the_call_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("nnUNet_raw", "/elsewhere")
    monkeypatch.delenv("nnUNet_results", raising=False)
    paths = NnunetPaths(tmp_path / "raw", tmp_path / "pre", tmp_path / "res", num_processes=2, num_workers=0)
    with nnunet_environment(paths) as env:
        assert os.environ["nnUNet_raw"] == str(tmp_path / "raw") and os.environ["nnUNet_results"] == str(
            tmp_path / "res"
        )
        assert (
            os.environ["nnUNet_def_n_proc"] == "2"
            and os.environ["nnUNet_n_proc_DA"] == "0"
            and env == {k: os.environ[k] for k in env}
        )
    assert os.environ["nnUNet_raw"] == "/elsewhere" and "nnUNet_results" not in os.environ
    with pytest.raises(ValueError, match="num_workers"):
        NnunetPaths(tmp_path, tmp_path, tmp_path, num_workers=-1)


def test_dataset_folder_name() -> None:
    assert dataset_folder_name(7, "Auto3DSeg") == "Dataset007_Auto3DSeg"
    with pytest.raises(ValueError, match="dataset_id"):
        dataset_folder_name(1000, "x")
    with pytest.raises(ValueError, match="dataset_name"):
        dataset_folder_name(1, "a b")


def test_nnunet_algo_entry() -> None:
    assert algo_entry("nnunet") == {
        "nnunet": {
            "_target_": "masksam.auto3dseg.nnunet_algo.NnunetAlgo",
            "template_path": str(REPO / "algorithm_templates"),
        }
    }
