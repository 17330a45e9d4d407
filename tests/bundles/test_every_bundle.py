# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""What every bundle must do, run on each bundle's real configs with its tiny settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from monai.bundle import ConfigWorkflow

from tests.bundles.conftest import REPO, TINY_BUNDLES, copy_bundle, run_bundle

SCHEMA = REPO.parent / "shared" / "monai_meta_schemas" / "meta_schema_20240725.json"


def test_every_bundle_of_the_repository_is_covered() -> None:
    bundles = {p.name for p in (REPO / "bundles").iterdir() if (p / "configs" / "metadata.json").is_file()}
    assert bundles == set(TINY_BUNDLES)


@pytest.mark.skipif(not SCHEMA.exists(), reason=f"offline schema copy not found at {SCHEMA}")
@pytest.mark.parametrize("name", sorted(TINY_BUNDLES))
def test_metadata_verifies_against_the_zoo_schema(tmp_path: Path, name: str) -> None:
    bundle = copy_bundle(name, tmp_path)
    proc = run_bundle(bundle, "verify_metadata", "--meta_file", "configs/metadata.json", "--filepath", str(SCHEMA))
    assert "metadata is verified with no error" in proc.stdout + proc.stderr


@pytest.mark.parametrize("name", sorted(TINY_BUNDLES))
@pytest.mark.parametrize(
    ("configs", "workflow_type"),
    [(["train.yaml"], "train"), (["train.yaml", "evaluate.yaml"], "train"), (["inference.yaml"], "infer")],
)
def test_required_properties(
    tmp_path: Path, synthetic_dataset: Path, name: str, configs: list[str], workflow_type: str
) -> None:
    tiny = TINY_BUNDLES[name]
    bundle = copy_bundle(name, tmp_path)
    workflow = ConfigWorkflow(
        config_file=[str(bundle / "configs" / c) for c in configs],
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=str(bundle / "configs" / "logging.conf"),
        workflow_type=workflow_type,
        **(tiny.train_overrides if workflow_type == "train" else tiny.overrides),
        dataset_dir=str(synthetic_dataset / ("imagesTs" if workflow_type == "infer" else "")),
        bundle_root=str(bundle),  # outputs (TensorBoard logs) stay in the copy, not the working directory
    )
    workflow.initialize()
    assert not workflow.check_properties()


@pytest.mark.parametrize("name", sorted(TINY_BUNDLES))
def test_multi_gpu_config_runs_ddp_with_gloo(tmp_path: Path, synthetic_dataset: Path, name: str) -> None:
    """Two ranks, and a validation list of one case: fewer than the ranks (each rank validates it)."""
    data = json.loads((synthetic_dataset / "dataset.json").read_text())
    datalist = tmp_path / "one_validation_case.json"
    datalist.write_text(json.dumps({"training": data["training"], "validation": data["training"][:1]}))
    bundle = copy_bundle(name, tmp_path)
    proc = run_bundle(
        bundle, "run", "--config_file", "['configs/train.yaml','configs/multi_gpu_train.yaml']",
        "--dataset_dir", str(synthetic_dataset), "--datalist", str(datalist), "--max_epochs", "1",
        *TINY_BUNDLES[name].train, torchrun=2,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert output.count("training from scratch") == 2, "both ranks start the trainer"
    assert "the validation list has 1 case(s) for 2 ranks" in output
    assert (bundle / "models" / "checkpoint_1.pt").exists()
    assert (bundle / "models" / "model.pt").exists(), "validation ran and saved the best model"


@pytest.mark.parametrize("name", sorted(TINY_BUNDLES))
def test_zoo_export_runs_without_the_installed_package(tmp_path: Path, synthetic_dataset: Path, name: str) -> None:
    """The exported copy carries the package under scripts/: it trains with `import masksam` made impossible."""
    export = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "zoo_export.py"), name, str(tmp_path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    bundle = Path(export.stdout.strip().splitlines()[-1])
    assert (bundle / "scripts" / "masksam" / "networks" / "__init__.py").is_file()
    assert f"scripts.masksam.networks.{TINY_BUNDLES[name].builder}" in (bundle / "configs" / "train.yaml").read_text()
    argv = ["monai.bundle", "run", "--config_file", "configs/train.yaml", "--dataset_dir", str(synthetic_dataset),
            "--max_epochs", "1", *TINY_BUNDLES[name].train]  # fmt: skip
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
