# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""The ``masksam`` Auto3DSeg template through MONAI's own AutoRunner, BundleGen and ensembling, on CPU.

Only our algorithm is registered: MONAI's stock templates are downloaded from GitHub, which CI cannot reach.
"""

from __future__ import annotations

import ast
import importlib
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
from monai.apps.auto3dseg import AutoRunner, BundleAlgo, BundleGen, import_bundle_algo_history
from monai.utils.enums import AlgoKeys

from masksam.auto3dseg import MasksamAlgo, TemplateInferer, masksam_algo_entry, template_dir
from tests.algorithm_templates.conftest import (
    REPO,
    SUBPROCESS_ENV,
    generate,
    make_template_dataset,
    read_yaml,
    write_inputs,
)
from tests.auto3dseg.conftest import CT_STATS, MRI_STATS

pytestmark = pytest.mark.xdist_group("masksam_template")

TEMPLATE = REPO / "algorithm_templates" / "masksam"
BUNDLE_CONFIGS = REPO / "bundles" / "masksam" / "configs"


#: input.yaml section shrinking the model and the data loading (CPU, seconds per epoch); the rest is filled.
TINY = {
    "backbone": "tiny", "patch_size": 32, "num_slices": 4, "generator_widths": [32, 16, 16, 8, 8],
    "mask_head_channels": 8, "num_workers": 0, "cache_rate": 0.0, "num_samples": 1, "use_tensorboard": False,
    "max_epochs": 3,
}  # fmt: skip
#: What AutoRunner.set_training_params sends to every algorithm: stock names and a key of another template.
TRAIN_PARAMS = {"num_epochs": 1, "num_epochs_per_validation": 1, "num_crops_per_image": 2}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_template_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory: pytest.TempPathFactory, dataset: Path) -> Path:
    """AutoRunner with our algorithm only: analysis, generation, 1-epoch training of both folds, best-2 ensemble."""
    work = tmp_path_factory.mktemp("work")
    runner = AutoRunner(
        work_dir=str(work),
        input={
            "name": "synthetic",
            "task": "segmentation",
            "modality": "CT",
            "datalist": str(dataset / "dataset.json"),
            "dataroot": str(dataset),
            "val_overlap": 0.25,  # a top-level key of our config: overrides it
            "masksam": TINY,
        },
        algos=masksam_algo_entry(),
    )
    runner.set_device_info(cmd_prefix=sys.executable)  # MONAI runs "python" from PATH by default
    runner.set_analyze_params({"device": "cpu", "worker": 0, "do_ccp": False})
    runner.set_training_params(TRAIN_PARAMS)
    runner.set_ensemble_method("AlgoEnsembleBestN", n_best=2)
    runner.run()
    return work


def ensemble_outputs(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(folder.rglob("*_ensemble.nii.gz"))}


def test_autorunner_trains_both_folds_and_ensembles_in_the_input_geometry(work_dir: Path, dataset: Path) -> None:
    stats = yaml.safe_load((work_dir / "datastats.yaml").read_text())["stats_summary"]
    for fold in (0, 1):
        algo = work_dir / f"masksam_{fold}"
        config = yaml.safe_load((algo / "configs" / "hyper_parameters.yaml").read_text())
        fg = stats["image_foreground_stats"]["intensity"]
        assert config["fold"] == fold and config["num_classes"] == 3 and config["num_queries"] == 7
        assert config["ct_window"] == [fg["percentile_00_5"], fg["percentile_99_5"]]
        assert config["backbone"] == "tiny" and config["val_overlap"] == 0.25
        assert config["max_epochs"] == 1 and config["val_interval"] == 1, "AutoRunner's num_epochs, written"
        assert config["datalist"] == str(work_dir / "dataset.json")
        assert sorted(p.name for p in (algo / "model").glob("checkpoint_*.pt")) == ["checkpoint_1.pt"], (
            "num_epochs=1 (stock name) overrides max_epochs=3; an unknown key is tolerated"
        )
        progress = yaml.safe_load((algo / "model" / "progress.yaml").read_text())
        score = progress[-1]["best_avg_dice_score"]
        assert isinstance(score, float) and 0.0 <= score <= 1.0
        saved = json.loads((algo / "algo_object.json").read_text())
        assert saved["_target_"] == "masksam.auto3dseg.algo.MasksamAlgo" and saved["best_metric"] == score

    outputs = ensemble_outputs(work_dir / "ensemble_output")
    assert sorted(outputs) == ["case_004_ensemble.nii.gz", "case_005_ensemble.nii.gz"]
    for name, path in outputs.items():
        image = nib.load(dataset / "imagesTs" / name.replace("_ensemble", ""))
        seg = nib.load(path)
        assert seg.shape == image.shape and np.allclose(seg.affine, image.affine)
        assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2}


RELOAD = """
import sys
import numpy as np
from monai.apps.auto3dseg import AlgoEnsembleBestN, AlgoEnsembleBuilder, import_bundle_algo_history
from monai.utils.enums import AlgoKeys

work, out = sys.argv[1:3]
assert "masksam" not in sys.modules
history = import_bundle_algo_history(work, only_trained=True)
builder = AlgoEnsembleBuilder(history, work + "/input.yaml")
builder.set_ensemble_method(AlgoEnsembleBestN(n_best=2))
ensemble = builder.get_ensemble()
save = {"_target_": "SaveImage", "output_dir": out, "output_postfix": "ensemble", "output_dtype": "$np.uint8",
        "resample": False, "separate_folder": False, "print_log": False, "savepath_in_metadict": True}
ensemble(pred_param={"image_save_func": save})
for item in ensemble.get_algo_ensemble():
    np.save(out + "/" + item[AlgoKeys.ID] + ".npy", item[AlgoKeys.ALGO].predict([ensemble.infer_files[0]])[0].numpy())
print("loaded", type(history[0][AlgoKeys.ALGO]).__module__, sys.modules["masksam"].__file__)
"""


def test_reload_in_a_new_process_reensembles(work_dir: Path, dataset: Path, tmp_path: Path) -> None:
    """algo_object.json -> the same algorithms in a process that never imported masksam (as MONAI's multi-GPU
    ensembling subprocesses): the template folder on sys.path must not shadow the package."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", RELOAD, str(work_dir), str(out)],
        cwd=tmp_path, env={k: v for k, v in SUBPROCESS_ENV.items() if k != "PYTHONPATH"},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"loaded masksam.auto3dseg.algo {REPO / 'masksam' / '__init__.py'}" in proc.stdout
    first, again = ensemble_outputs(work_dir / "ensemble_output"), ensemble_outputs(out)
    assert sorted(again) == sorted(first)
    for name in first:
        np.testing.assert_array_equal(
            np.asarray(nib.load(again[name]).dataobj), np.asarray(nib.load(first[name]).dataobj)
        )
    test_image = {"image": str(dataset / "imagesTs" / "case_004.nii.gz")}
    for item in import_bundle_algo_history(str(work_dir), only_trained=True):
        probs = item[AlgoKeys.ALGO].predict([test_image])[0]
        np.testing.assert_allclose(np.load(out / f"{item[AlgoKeys.ID]}.npy"), probs.numpy(), atol=1e-5)


def test_infer_class_gives_probabilities_in_the_image_grid_and_loads_weights_once(
    work_dir: Path, dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[str] = []
    torch_load = torch.load

    def counting_load(f, *args, **kwargs):
        loads.append(os.fspath(f))
        return torch_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    history = {h[AlgoKeys.ID]: h[AlgoKeys.ALGO] for h in import_bundle_algo_history(str(work_dir), only_trained=True)}
    images = sorted((dataset / "imagesTs").glob("*.nii.gz"))
    # What the ensembler does: one predict() per file, with its extra parameters.
    params = {"rank": 0, "image_save_func": {"_target_": "SaveImage"}, "n_best": 2, "output_dir": "ignored"}
    probs = [history["masksam_0"].predict([{"image": str(f)}], predict_params=params)[0] for f in images]
    assert [Path(p).name for p in loads] == ["model.pt"], "the weights load once across predict() calls"
    assert Path(loads[0]).parent.parent.name == "masksam_0"
    for prob, path in zip(probs, images, strict=True):
        image = nib.load(path)
        assert prob.shape == (3, *image.shape) and prob.dtype == torch.float32
        assert np.allclose(prob.affine.numpy(), image.affine)
        assert prob.meta["filename_or_obj"] == str(path)
        assert prob.min() >= 0
        torch.testing.assert_close(prob.sum(0), torch.ones(image.shape), atol=1e-4, rtol=0)

    # Another fold, moved, whose config names SAM weights that are not there: model.pt holds them.
    moved = tmp_path / "moved"
    shutil.copytree(work_dir / "masksam_1", moved)
    config = moved / "configs" / "hyper_parameters.yaml"
    config.write_text(config.read_text().replace("sam_checkpoint: null", "sam_checkpoint: /nowhere/sam.pth"))
    other = TemplateInferer([str(config)], rank=0, image_save_func=None)
    by_path = other.infer(images[0])  # a plain path works too
    assert other.checkpoint == str(moved / "model" / "model.pt")
    torch.testing.assert_close(by_path, other.infer({"image": str(images[0])}))
    assert not torch.allclose(by_path, probs[0]), "each fold's inferer uses its own weights"


def test_validate_script_scores_the_best_model(work_dir: Path) -> None:
    algo = work_dir / "masksam_0"
    proc = subprocess.run(
        [sys.executable, str(algo / "scripts" / "validate.py"), "run",
         f"--config_file={algo / 'configs' / 'hyper_parameters.yaml'}", "--num_crops_per_image=2"],
        env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    best = yaml.safe_load((algo / "model" / "progress.yaml").read_text())[-1]["best_avg_dice_score"]
    assert float(proc.stdout.strip().splitlines()[-1]) == pytest.approx(best, abs=1e-6)
    rows = (algo / "eval" / "val_mean_dice_raw.csv").read_text().splitlines()[1:]
    cases = sorted(Path(r.split(",")[0]).name for r in rows)
    assert cases == ["case_000.nii.gz", "case_002.nii.gz"], "fold 0's validation cases"


def test_train_script_under_torchrun_with_gloo(work_dir: Path, tmp_path: Path) -> None:
    """A copied algorithm folder trains under torchrun (2 CPU ranks): outputs follow the folder, rank 0 writes."""
    algo = tmp_path / "masksam_1"
    shutil.copytree(work_dir / "masksam_1", algo, ignore=shutil.ignore_patterns("model", "eval"))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(algo / "scripts" / "train.py"), "run", f"--config_file={algo / 'configs' / 'hyper_parameters.yaml'}",
         *[f"--{k}={v}" for k, v in TRAIN_PARAMS.items()]],
        env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-6000:]
    log = proc.stdout + proc.stderr
    assert log.count("training from scratch") == 2, "both ranks train"
    assert "Iter: 1/1 " in log and "Iter: 2/2 " not in log, "the DistributedSampler splits the 2 training cases"
    assert sorted(p.name for p in (algo / "model").iterdir()) == ["checkpoint_1.pt", "model.pt", "progress.yaml"]
    assert len(yaml.safe_load((algo / "model" / "progress.yaml").read_text())) == 1


def test_fill_template_config_on_ct_statistics(tmp_path: Path) -> None:
    stats_file, input_file = write_inputs(tmp_path, CT_STATS, "CT")
    algo, config = generate(MasksamAlgo, "masksam", tmp_path, stats_file, input_file)
    expected = {
        "in_channels": 1, "num_classes": 16, "num_queries": 24, "modality": "ct", "ct_window": [-160.0, 260.0],
        "spacing": [0.8, 0.8, 2.5], "patch_size": 512, "num_slices": 9, "fold": 1,
        "bundle_root": str(tmp_path / "masksam_1"), "dataset_dir": str(tmp_path),
        "datalist": str(tmp_path / "dataset.json"),
        "batch_size": 2, "max_epochs": 521, "val_interval": 26,  # 240 cases analysed, 5 folds in the datalist
    }  # fmt: skip
    assert {k: config[k] for k in expected} == expected
    assert algo.fill_records["hyper_parameters.yaml"]["num_queries"] == 24
    bundle = read_yaml(BUNDLE_CONFIGS / "train.yaml")
    assert config["train"] == bundle["train"] and config["backbone"] == bundle["backbone"], "the rest is the bundle's"

    # HPO regenerates from the records, with its own parameters.
    algo.export_to_disk(str(tmp_path), "masksam_hpo", fill_with_datastats=False, learning_rate=0.02)
    hpo = yaml.safe_load((tmp_path / "masksam_hpo" / "configs" / "hyper_parameters.yaml").read_text())
    assert {k: hpo[k] for k in expected} == expected and hpo["learning_rate"] == 0.02


def test_generated_config_is_the_bundles_with_the_templates_keys_over_it(tmp_path: Path) -> None:
    """No config section is copied between the bundle and the template: the generated config is the bundle's
    train.yaml except for the template's own keys and the filled settings, with the bundle's multi-GPU and
    evaluation configs as sections; and no key of the template restates the bundle's value."""
    stats_file, input_file = write_inputs(tmp_path, CT_STATS, "CT")
    algo, config = generate(MasksamAlgo, "masksam", tmp_path, stats_file, input_file)
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
    assert config["network_def"]["normalize"] is True, "probabilities for the ensemble"


def test_max_epochs_from_input_sets_the_validation_interval(tmp_path: Path) -> None:
    stats_file, input_file = write_inputs(tmp_path, CT_STATS, "CT", masksam={"max_epochs": 100})
    _, config = generate(MasksamAlgo, "masksam", tmp_path, stats_file, input_file)
    assert config["max_epochs"] == 100 and config["val_interval"] == 5


def test_training_params_are_written_into_the_folds_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """AutoRunner's num_epochs reaches train.py on its command line; the fold's config must say it too."""
    stats_file, input_file = write_inputs(tmp_path, CT_STATS, "CT", masksam={"max_epochs": 100})
    algo, _ = generate(MasksamAlgo, "masksam", tmp_path, stats_file, input_file)
    launched = []
    monkeypatch.setattr(BundleAlgo, "train", lambda self, params=None, device=None: launched.append(params))
    algo.train({"num_epochs": 2, "num_epochs_per_validation": 1, "num_crops_per_image": 2, "network_def": 1})
    config = read_yaml(tmp_path / "masksam_1" / "configs" / "hyper_parameters.yaml")
    assert config["max_epochs"] == 2 and config["val_interval"] == 1
    assert "num_crops_per_image" not in config and isinstance(config["network_def"], dict), "only plain settings"
    assert launched == [{"num_epochs": 2, "num_epochs_per_validation": 1, "num_crops_per_image": 2, "network_def": 1}]


def test_fill_template_config_on_mri_statistics_with_input_overrides(tmp_path: Path) -> None:
    stats_file, input_file = write_inputs(
        tmp_path, MRI_STATS, "MRI",
        learning_rate=0.005,  # a setting of the config: overrides
        val_interval=7,
        train=False,  # an AutoRunner switch, not our "train" section
        roi_size=[96, 96, 96],  # another algorithm's setting; ours is derived (an expression): kept
        segresnet={"num_epochs": 3},  # another algorithm's section
        masksam={"num_queries": 11, "backbone": "lite_medsam", "val_interval": 9},  # ours wins over the top level
    )  # fmt: skip
    _, config = generate(MasksamAlgo, "masksam", tmp_path, stats_file, input_file, fold=0)
    bundle = read_yaml(BUNDLE_CONFIGS / "train.yaml")
    assert config["modality"] == "mri" and config["in_channels"] == 2 and config["num_classes"] == 4
    assert config["ct_window"] == bundle["ct_window"], "no CT window for MRI"
    assert config["spacing"] == [1.0, 1.0, 1.0] and config["num_slices"] == 12
    assert config["patch_size"] == 256, "LiteMedSAM patches are multiples of 64"
    assert config["num_queries"] == 11 and config["backbone"] == "lite_medsam" and config["val_interval"] == 9
    assert config["learning_rate"] == 0.005 and config["train"] == bundle["train"]
    assert config["roi_size"] == bundle["roi_size"]
    assert "segresnet" not in config and "name" not in config


def test_multi_label_tasks_are_skipped(tmp_path: Path) -> None:
    _, input_file = write_inputs(tmp_path, CT_STATS, "CT", sigmoid=True)
    algo = MasksamAlgo(template_path=str(template_dir()))
    algo.set_data_source(str(input_file))
    skip, info = algo.pre_check_skip_algo()
    assert skip and "sigmoid" in info
    _, input_file = write_inputs(tmp_path, CT_STATS, "CT")
    algo.set_data_source(str(input_file))
    assert algo.pre_check_skip_algo() == (False, "")


def test_algo_entry_points_at_the_template(tmp_path: Path) -> None:
    entry = masksam_algo_entry()
    assert entry == {
        "masksam": {"_target_": "masksam.auto3dseg.algo.MasksamAlgo", "template_path": str(TEMPLATE.parent)}
    }
    with pytest.raises(FileNotFoundError, match="no template"):
        masksam_algo_entry(tmp_path)


def test_registration_by_templates_folder(work_dir: Path, tmp_path: Path) -> None:
    """The template dropped beside other templates: BundleGen derives ``masksam.scripts.algo.MasksamAlgo``."""
    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATE, templates / "masksam")
    out = tmp_path / "work"
    gen = BundleGen(
        algo_path=str(out), algos="masksam", templates_path_or_url=str(templates),
        data_stats_filename=str(work_dir / "datastats.yaml"), data_src_cfg_name=str(work_dir / "input.yaml"),
    )  # fmt: skip
    gen.generate(str(out), num_fold=1)
    (item,) = import_bundle_algo_history(str(out), only_trained=False)
    assert isinstance(item[AlgoKeys.ALGO], MasksamAlgo) and item[AlgoKeys.ID] == "masksam_0"
    config = yaml.safe_load((out / "masksam_0" / "configs" / "hyper_parameters.yaml").read_text())
    assert config["backbone"] == "tiny" and config["fold"] == 0


def test_template_folder_is_never_imported_as_the_package(tmp_path: Path) -> None:
    code = f"import sys; sys.path.insert(0, {str(TEMPLATE.parent)!r}); import masksam"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr and "template folder" in proc.stderr


GENERIC = ("algo", "infer", "train", "validate", "utils", "segmenter")


def test_template_modules_do_not_clash_with_another_templates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two copies of the template and a stock-like template (whose scripts import siblings by bare name, as MONAI's
    do) in one process: our scripts import nothing from their folder, so no module names are shared."""
    stock = tmp_path / "stock" / "scripts"
    stock.mkdir(parents=True)
    for name in GENERIC:
        (stock / f"{name}.py").write_text(f"SENTINEL = 'stock {name}'\n")
    for copy in ("copy_a", "copy_b"):
        shutil.copytree(TEMPLATE, tmp_path / copy)
    monkeypatch.syspath_prepend(str(stock))
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    try:
        for name in GENERIC:  # the stock template's helpers are loaded first, as in an ensemble
            importlib.import_module(name)
        loaded = {
            (copy, script): importlib.import_module(f"{copy}.scripts.{script}")
            for copy in ("copy_a", "copy_b")
            for script in ("algo", "infer", "train", "validate")
        }
        new = {name: sys.modules[name] for name in set(sys.modules) - before}
        assert all(new[g].SENTINEL == f"stock {g}" for g in GENERIC), "the other template's modules are intact"
    finally:
        for name in set(sys.modules) - before:
            del sys.modules[name]
    files = {name: str(getattr(module, "__file__", "")) for name, module in new.items()}
    from_a = {n for n, f in files.items() if f.startswith(str(tmp_path / "copy_a"))}
    from_b = {n for n, f in files.items() if f.startswith(str(tmp_path / "copy_b"))}
    assert from_a and from_b and not from_a & from_b, "module names are unique per template copy"
    assert all(n.split(".")[0] in {"copy_a", "copy_b"} for n in from_a | from_b), "nothing imported by bare name"
    assert loaded["copy_a", "infer"].InferClass is loaded["copy_b", "infer"].InferClass is TemplateInferer
    assert loaded["copy_a", "algo"].MasksamAlgo is MasksamAlgo

    for script in sorted((TEMPLATE / "scripts").glob("*.py")):  # statically: only package or library imports
        for node in ast.walk(ast.parse(script.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0 and node.module.split(".")[0] in {"__future__", "masksam"}, script.name
            elif isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] not in GENERIC for a in node.names), script.name
