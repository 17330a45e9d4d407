# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""The ``masam`` Auto3DSeg template, alone and ensembled with ``masksam`` through MONAI's AutoRunner, on CPU.

Only our algorithms are registered: MONAI's stock templates are downloaded from GitHub, which CI cannot reach.
"""

from __future__ import annotations

import ast
import importlib.util
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
from monai.apps.auto3dseg import AutoRunner, BundleGen, import_bundle_algo_history
from monai.utils.enums import AlgoKeys

from masksam.auto3dseg import MasamAlgo, TemplateInferer, algo_entry
from tests.algorithm_templates.conftest import (
    REPO,
    SUBPROCESS_ENV,
    generate,
    make_template_dataset,
    read_yaml,
    write_inputs,
)
from tests.auto3dseg.conftest import CT_STATS, MRI_STATS, datastats

pytestmark = pytest.mark.xdist_group("masam_template")

TEMPLATE = REPO / "algorithm_templates" / "masam"
BUNDLE_CONFIGS = REPO / "bundles" / "ma_sam" / "configs"
#: Settings of the MaskSAM bundle that the MA-SAM bundle lacks: never written into a masam config.
MASKSAM_ONLY = {
    "num_queries", "query_chunk_size", "generator_widths", "mask_head_channels", "encoder_adapter_dim",
    "decoder_adapter_dim",
}  # fmt: skip

#: input.yaml for both algorithms. Top level: settings both configs have, and MaskSAM-only ones (which must not
#: reach MA-SAM); each algorithm's section shrinks its model (CPU, seconds per epoch).
TINY_INPUT = {
    "backbone": "tiny", "patch_size": 32, "num_workers": 0, "cache_rate": 0.0, "num_samples": 1,
    "use_tensorboard": False, "max_epochs": 1, "generator_widths": [32, 16, 16, 8, 8], "mask_head_channels": 8,
    "masksam": {"num_slices": 4},
    "masam": {"num_slices": 3, "fact_rank": 4, "adapter_dim": 8, "warmup_iterations": 2, "num_queries": 5},
}  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_template_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory: pytest.TempPathFactory, dataset: Path) -> Path:
    """AutoRunner with masksam and masam registered by dict: analysis, generation and 1-epoch training of fold 0
    of each, then AlgoEnsembleBestN of both on the test images."""
    work = tmp_path_factory.mktemp("work")
    inputs = {
        "name": "synthetic", "task": "segmentation", "modality": "CT", "datalist": str(dataset / "dataset.json"),
        "dataroot": str(dataset), **TINY_INPUT,
    }  # fmt: skip
    runner = AutoRunner(work_dir=str(work), input=inputs, algos={**algo_entry("masksam"), **algo_entry("masam")})
    runner.set_device_info(cmd_prefix=sys.executable)  # MONAI runs "python" from PATH by default
    runner.set_analyze_params({"device": "cpu", "worker": 0, "do_ccp": False})
    runner.set_num_fold(1)
    runner.set_training_params({"num_epochs": 1, "num_epochs_per_validation": 1})
    runner.set_ensemble_method("AlgoEnsembleBestN", n_best=2)
    runner.run()
    return work


def test_autorunner_trains_masksam_and_masam_and_ensembles_them_in_each_images_grid(
    work_dir: Path, dataset: Path
) -> None:
    assert sorted(p.parent.name for p in work_dir.glob("*/algo_object.json")) == ["masam_0", "masksam_0"]
    masam = read_yaml(work_dir / "masam_0" / "configs" / "hyper_parameters.yaml")
    assert masam["num_slices"] == 3 and masam["fact_rank"] == 4 and masam["backbone"] == "tiny"
    assert masam["num_classes"] == 3 and masam["patch_size"] == 32 and masam["fold"] == 0
    assert not MASKSAM_ONLY & set(masam), "MaskSAM's settings (top level, or under masam:) never reach MA-SAM"
    masksam = read_yaml(work_dir / "masksam_0" / "configs" / "hyper_parameters.yaml")
    assert masksam["num_slices"] == 4 and masksam["mask_head_channels"] == 8, "the top level reaches MaskSAM"
    for name, target in (("masam_0", "MasamAlgo"), ("masksam_0", "MasksamAlgo")):
        saved = json.loads((work_dir / name / "algo_object.json").read_text())
        assert saved["_target_"] == f"masksam.auto3dseg.algo.{target}"
        assert 0.0 <= saved["best_metric"] <= 1.0, f"{name} trained and validated"

    history = {h[AlgoKeys.ID]: h[AlgoKeys.ALGO] for h in import_bundle_algo_history(str(work_dir), only_trained=True)}
    outputs = {p.name: p for p in (work_dir / "ensemble_output").rglob("*_ensemble.nii.gz")}
    assert sorted(outputs) == ["case_004_ensemble.nii.gz", "case_005_ensemble.nii.gz"]
    for name, path in outputs.items():
        image_path = dataset / "imagesTs" / name.replace("_ensemble", "")
        image, seg = nib.load(image_path), nib.load(path)
        assert seg.shape == image.shape and np.allclose(seg.affine, image.affine)
        probs = [history[a].predict([{"image": str(image_path)}])[0] for a in ("masksam_0", "masam_0")]
        expected = torch.stack(probs).mean(0).argmax(0).numpy()
        np.testing.assert_array_equal(np.asarray(seg.dataobj), expected, err_msg="the mean of both algorithms")


def test_infer_class_gives_probabilities_in_the_image_grid_and_loads_weights_once(
    work_dir: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[str] = []
    torch_load = torch.load

    def counting_load(f, *args, **kwargs):
        loads.append(os.fspath(f))
        return torch_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    (algo,) = [h[AlgoKeys.ALGO] for h in import_bundle_algo_history(str(work_dir)) if h[AlgoKeys.ID] == "masam_0"]
    assert isinstance(algo, MasamAlgo)
    images = sorted((dataset / "imagesTs").glob("*.nii.gz"))
    params = {"rank": 0, "image_save_func": {"_target_": "SaveImage"}, "n_best": 2}  # what the ensembler passes
    probs = [algo.predict([{"image": str(f)}], predict_params=params)[0] for f in images]
    assert [Path(p).name for p in loads] == ["model.pt"], "the weights load once across predict() calls"
    assert Path(loads[0]).parent.parent.name == "masam_0"
    for prob, path in zip(probs, images, strict=True):
        image = nib.load(path)
        assert prob.shape == (3, *image.shape) and prob.dtype == torch.float32
        assert np.allclose(prob.affine.numpy(), image.affine) and prob.meta["filename_or_obj"] == str(path)
        assert prob.min() >= 0
        torch.testing.assert_close(prob.sum(0), torch.ones(image.shape), atol=1e-4, rtol=0)

    # The InferClass itself, on a plain path, with a key meant for other purposes.
    inferer = TemplateInferer(str(work_dir / "masam_0" / "configs" / "hyper_parameters.yaml"), image_save_func=None)
    torch.testing.assert_close(inferer.infer(images[0]), probs[0])


def test_validate_script_scores_the_best_model(work_dir: Path) -> None:
    """The bundle's evaluate.yaml (the config's ``evaluate`` section) over the fold's config: per-case Dice."""
    algo = work_dir / "masam_0"
    proc = subprocess.run(
        [sys.executable, str(algo / "scripts" / "validate.py"), "run",
         f"--config_file={algo / 'configs' / 'hyper_parameters.yaml'}", "--num_crops_per_image=2"],
        env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    best = read_yaml(algo / "model" / "progress.yaml")[-1]["best_avg_dice_score"]
    assert float(proc.stdout.strip().splitlines()[-1]) == pytest.approx(best, abs=1e-6)
    rows = (algo / "eval" / "val_mean_dice_raw.csv").read_text().splitlines()[1:]
    assert sorted(Path(r.split(",")[0]).name for r in rows) == ["case_000.nii.gz", "case_002.nii.gz"]


def test_fill_template_config_on_ct_statistics(tmp_path: Path) -> None:
    stats_file, input_file = write_inputs(
        tmp_path, CT_STATS, "CT",
        num_queries=30, mask_head_channels=8,  # MaskSAM settings at the top level: not ours, skipped
        masksam={"num_slices": 9, "fact_rank": 2},  # another algorithm's section
        masam={"fact_rank": 8, "query_chunk_size": 2},  # ours: a setting overrides, a MaskSAM one is dropped
    )  # fmt: skip
    algo, config = generate(MasamAlgo, "masam", tmp_path, stats_file, input_file)
    expected = {
        "in_channels": 1, "num_classes": 16, "modality": "ct", "ct_window": [-160.0, 260.0],
        "spacing": [0.8, 0.8, 2.5], "patch_size": 512, "num_slices": 5, "fold": 1, "fact_rank": 8,
        "bundle_root": str(tmp_path / "masam_1"), "dataset_dir": str(tmp_path),
        "datalist": str(tmp_path / "dataset.json"),
        "batch_size": 2, "max_epochs": 521, "val_interval": 26,  # 240 cases analysed, 5 folds in the datalist
    }  # fmt: skip
    assert {k: config[k] for k in expected} == expected
    records = algo.fill_records["hyper_parameters.yaml"]
    assert not MASKSAM_ONLY & (set(config) | set(records)), "no MaskSAM-only key is written"
    bundle = read_yaml(BUNDLE_CONFIGS / "train.yaml")
    assert config["network_def"] == bundle["network_def"] and config["adapter_dim"] == bundle["adapter_dim"]


@pytest.mark.parametrize(
    ("stats", "modality", "expected"),
    [
        (MRI_STATS, "MRI", 5),  # isotropic 176 slices: the paper's 5 (MaskSAM's rule would take 12)
        (datastats([256, 256, 3], [1.0, 1.0, 5.0], [0, 1, 2], 20), "MRI", 3),  # thinner than 5: all slices
        (datastats([256, 256, 2], [1.0, 1.0, 5.0], [0, 1], 20), "CT", 2),
    ],
)
def test_num_slices_is_the_papers_five_unless_the_volumes_are_thinner(
    tmp_path: Path, stats: dict, modality: str, expected: int
) -> None:
    _, config = generate(MasamAlgo, "masam", tmp_path, *write_inputs(tmp_path, stats, modality))
    assert config["num_slices"] == expected and config["roi_size"] == "$[@patch_size, @patch_size, @num_slices]"


def test_spacing_null_keeps_each_volumes_grid_and_sizes_the_stack_by_the_median_volume(tmp_path: Path) -> None:
    """``masam: {spacing: null}`` (the bundle's default, the paper's): no resampling; T from the median volume."""
    stats = datastats([256, 256, 4], [0.7, 0.7, 5.0], [0, 1, 2], 20)
    inputs = write_inputs(tmp_path, stats, "MRI", masam={"spacing": None})
    _, config = generate(MasamAlgo, "masam", tmp_path, *inputs)
    assert config["spacing"] is None and config["num_slices"] == 4


def test_generated_config_is_the_bundles_with_the_templates_keys_over_it(tmp_path: Path) -> None:
    """The generated config is the MA-SAM bundle's train.yaml except for the template's own keys and the filled
    settings, with the bundle's multi-GPU and evaluation configs as sections; no template key restates the bundle."""
    algo, config = generate(MasamAlgo, "masam", tmp_path, *write_inputs(tmp_path, CT_STATS, "CT"))
    bundle, template = (
        read_yaml(BUNDLE_CONFIGS / "train.yaml"),
        read_yaml(TEMPLATE / "configs" / "hyper_parameters.yaml"),
    )
    own = {key.split("#")[0] for key in template} | set(algo.fill_records["hyper_parameters.yaml"])
    changed = {key for key in set(bundle) | set(config) if bundle.get(key) != config.get(key)}
    assert changed - own == {"multi_gpu", "evaluate"}
    assert config["multi_gpu"] == read_yaml(BUNDLE_CONFIGS / "multi_gpu_train.yaml")
    assert config["evaluate"] == read_yaml(BUNDLE_CONFIGS / "evaluate.yaml")
    restated = [k for k, v in template.items() if "#" not in k and k in bundle and bundle[k] == v]
    assert not restated, f"the template restates the bundle's values of {restated}"
    assert config["infer"]["inferer"]["_target_"] == "masksam.inferers.SliceWindowInferer"


def test_algo_entry_and_registration_by_templates_folder(work_dir: Path, tmp_path: Path) -> None:
    """By dict, the class where it is defined; by folder, BundleGen derives ``masam.scripts.algo.MasamAlgo``."""
    assert algo_entry("masam") == {
        "masam": {"_target_": "masksam.auto3dseg.algo.MasamAlgo", "template_path": str(TEMPLATE.parent)}
    }
    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATE, templates / "masam")
    out = tmp_path / "work"
    gen = BundleGen(
        algo_path=str(out), algos="masam", templates_path_or_url=str(templates),
        data_stats_filename=str(work_dir / "datastats.yaml"), data_src_cfg_name=str(work_dir / "input.yaml"),
    )  # fmt: skip
    gen.generate(str(out), num_fold=1)
    (item,) = import_bundle_algo_history(str(out), only_trained=False)
    assert isinstance(item[AlgoKeys.ALGO], MasamAlgo) and item[AlgoKeys.ID] == "masam_0"
    config = read_yaml(out / "masam_0" / "configs" / "hyper_parameters.yaml")
    assert config["backbone"] == "tiny" and config["fact_rank"] == 4 and config["fold"] == 0


def test_scripts_import_only_the_package_so_templates_share_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both templates' infer.py loaded as BundleAlgo.get_inferer does (module "InferClass", one process) give the
    same class; no script imports a sibling by bare name (MONAI's stock helpers are named algo, utils...)."""
    classes = []
    for name in ("masksam", "masam"):
        spec = importlib.util.spec_from_file_location(
            "InferClass", REPO / "algorithm_templates" / name / "scripts" / "infer.py"
        )
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, "InferClass", module)
        spec.loader.exec_module(module)
        classes.append(module.InferClass)
    assert classes == [TemplateInferer, TemplateInferer]
    for script in sorted((TEMPLATE / "scripts").glob("*.py")):
        for node in ast.walk(ast.parse(script.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0 and node.module.split(".")[0] in {"__future__", "masksam"}, script.name
            elif isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] in {"logging", "fire"} for a in node.names), script.name
