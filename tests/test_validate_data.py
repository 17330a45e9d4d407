# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""``validate_datalist`` and the ``python -m masksam.validate_data`` command on small synthetic datasets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import fire
import nibabel as nib
import numpy as np
import pytest

from masksam.data.synthetic import make_synthetic_dataset
from masksam.transforms import Problem
from masksam.validate_data import main, num_classes_from_datalist, validate_datalist

SHAPE = (10, 9, 6)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """A clean 3-class dataset: 3 training cases, 1 testing case; returns the datalist path."""
    return make_synthetic_dataset(tmp_path / "data", num_cases=3, shape=SHAPE, num_classes=3, num_test=1)


def _label_path(datalist: Path, index: int) -> Path:
    return datalist.parent / json.loads(datalist.read_text())["training"][index]["label"]


def _errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]


def test_clean_dataset_has_no_problems(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert validate_datalist(dataset, progress=False) == []
    fire.Fire(main, command=["--datalist", str(dataset), "--progress", "False"])  # no SystemExit: exit status 0
    assert "checked 4 case(s)" in capsys.readouterr().out


def test_num_classes_from_labels_field(dataset: Path) -> None:
    path = _label_path(dataset, 1)
    label = np.zeros(SHAPE, np.uint8)
    label[0, 0, 0] = 3  # the datalist's "labels" has 3 classes: 0, 1, 2
    nib.save(nib.Nifti1Image(label, np.diag([1.0, 1.0, 2.0, 1.0])), path)
    (problem,) = validate_datalist(dataset, progress=False)
    assert problem.item == "training[1]" and problem.file == str(path) and problem.key == "label"
    assert problem.message.startswith("label values [3] are outside [0, 3) for num_classes=3 (1 voxels)")
    assert validate_datalist(dataset, num_classes=4, progress=False) == []


def test_num_classes_from_both_label_styles() -> None:
    assert num_classes_from_datalist({"labels": {"0": "background", "1": "liver", "2": "tumour"}}) == 3
    assert num_classes_from_datalist({"labels": {"background": 0, "liver": 1}}) == 2
    assert num_classes_from_datalist({"training": []}) is None


def test_shape_mismatch_and_nan_found_per_case(dataset: Path) -> None:
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(np.zeros((10, 9, 5), np.uint8), affine), _label_path(dataset, 0))
    image = np.zeros(SHAPE, np.float32)
    image[0, 0, 0] = np.inf
    image_path = dataset.parent / "imagesTr" / "case_002.nii.gz"
    nib.save(nib.Nifti1Image(image, affine), image_path)
    problems = validate_datalist(dataset, progress=False)
    assert [(p.item, p.key) for p in problems] == [("training[0]", "label"), ("training[2]", "image")]
    assert "spatial shape (10, 9, 5) differs from the image spatial shape (10, 9, 6)" in problems[0].message
    assert problems[1].file == str(image_path) and "found 0 NaN and 1 Inf" in problems[1].message


def test_missing_file(dataset: Path) -> None:
    path = _label_path(dataset, 2)
    path.unlink()
    (problem,) = validate_datalist(dataset, progress=False)
    assert (problem.file, problem.key, problem.message, problem.item) == (
        str(path),
        "label",
        "file not found",
        "training[2]",
    )


def test_missing_label_key(dataset: Path) -> None:
    data = json.loads(dataset.read_text())
    del data["training"][0]["label"]
    dataset.write_text(json.dumps(data))
    (problem,) = validate_datalist(dataset, progress=False)
    assert problem.key == "label" and problem.item == "training[0]" and "item has no 'label'" in problem.message


def test_empty_datalist(dataset: Path) -> None:
    data = json.loads(dataset.read_text())
    data["training"] = []
    dataset.write_text(json.dumps(data))
    problems = validate_datalist(dataset, progress=False)
    assert [(p.file, p.key, p.message) for p in problems] == [
        (str(dataset), "training", "the 'training' list of the datalist is empty")
    ]


def test_missing_or_malformed_datalist(tmp_path: Path) -> None:
    (problem,) = validate_datalist(tmp_path / "nope.json", progress=False)
    assert problem.key == "datalist" and "datalist file not found" in problem.message and "nope.json" in problem.message
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    (problem,) = validate_datalist(bad, progress=False)
    assert "is not valid JSON" in problem.message


def test_explicit_keys_must_exist(dataset: Path) -> None:
    (problem,) = validate_datalist(dataset, keys="training,validation", progress=False)
    assert problem.key == "validation" and "the datalist has no 'validation' list" in problem.message


def test_empty_optional_lists(dataset: Path) -> None:
    data = json.loads(dataset.read_text())
    data["testing"], data["validation"] = [], []  # an empty 'validation' list would fail training
    dataset.write_text(json.dumps(data))
    problems = validate_datalist(dataset, progress=False)
    assert [(p.key, p.severity) for p in problems] == [("validation", "error"), ("testing", "warning")]


def test_corrupt_file(dataset: Path) -> None:
    path = dataset.parent / "imagesTr" / "case_001.nii.gz"
    path.write_bytes(np.random.default_rng(0).bytes(200))
    (problem,) = validate_datalist(dataset, progress=False)
    assert problem.file == str(path) and problem.key == "image"
    assert problem.message.startswith("cannot read the file: ImageFileError: ")


def test_truncated_file(dataset: Path) -> None:
    path = dataset.parent / "imagesTs" / "case_003.nii.gz"  # the testing item: checked as an image
    path.write_bytes(path.read_bytes()[:-500])
    (problem,) = validate_datalist(dataset, progress=False)
    assert problem.file == str(path) and problem.item == "testing[0]"
    assert problem.message.startswith("cannot read the data: EOFError: ")


def test_2d_and_4d_images(dataset: Path) -> None:
    affine = np.diag([1.0, 1.0, 2.0, 1.0])  # the labels' affine
    nib.save(nib.Nifti1Image(np.zeros(SHAPE[:2], np.float32), affine), dataset.parent / "imagesTr" / "case_000.nii.gz")
    nib.save(
        nib.Nifti1Image(np.zeros((*SHAPE, 2), np.float32), affine), dataset.parent / "imagesTr" / "case_001.nii.gz"
    )
    problems = validate_datalist(dataset, progress=False)
    assert "found shape (1, 10, 9): a 2D image given to a 3D bundle" in problems[0].message
    assert "expected 1 channel(s) (in_channels=1), found 2 in shape (2, 10, 9, 6)" in problems[1].message
    assert len(problems) == 2  # no shape/affine noise on top of the dimension errors
    problems = validate_datalist(dataset, in_channels=2, keys="training", progress=False)
    assert [p.item for p in problems] == ["training[0]", "training[2]"]  # the 2-channel image now fits


def test_extreme_anisotropy_is_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    datalist = make_synthetic_dataset(tmp_path, num_cases=2, shape=SHAPE, num_test=1, spacing=(0.5, 0.5, 6.0))
    problems = validate_datalist(datalist, progress=False)
    assert len(problems) == 3 and {p.severity for p in problems} == {"warning"}
    assert "spacing (0.5, 0.5, 6) is very anisotropic" in problems[0].message
    main(str(datalist), progress=False)  # warnings only: exit status 0
    assert "WARNING training[0]" in capsys.readouterr().out


def test_small_volume_is_not_a_problem(tmp_path: Path) -> None:
    datalist = make_synthetic_dataset(tmp_path, num_cases=2, shape=(4, 4, 2), num_test=1)
    assert validate_datalist(datalist, progress=False) == []


def test_cli_report_and_exit_status(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    label = np.zeros(SHAPE, np.uint8)
    label[1, 1, 1] = 7
    nib.save(nib.Nifti1Image(label, np.diag([1.0, 1.0, 2.0, 1.0])), _label_path(dataset, 0))
    report = tmp_path / "out" / "report.json"
    with pytest.raises(SystemExit) as excinfo:  # the flags as fire parses them from the command line
        fire.Fire(main, command=["--datalist", str(dataset), "--keys", "training,testing", "--output", str(report)])
    assert excinfo.value.code == 1
    out = capsys.readouterr().out
    assert f"ERROR   training[0] {_label_path(dataset, 0)} [label]: label values [7]" in out
    assert "checked 4 case(s)" in out and "1 error(s), 0 warning(s)" in out
    written = json.loads(report.read_text())
    assert written["num_errors"] == 1 and written["num_classes"] == 3 and written["num_cases"] == 4
    assert written["problems"][0]["file"] == str(_label_path(dataset, 0))
    assert written["problems"][0]["message"].startswith("label values [7] are outside [0, 3)")


def test_report_never_overwrites_the_datalist(dataset: Path) -> None:
    with pytest.raises(ValueError, match="is the datalist itself"):
        main(str(dataset), output=str(dataset), progress=False)


def test_module_entry_point(dataset: Path, tmp_path: Path) -> None:
    """The real command: non-zero exit and a JSON report (exit status 0 when clean: see the tests above)."""
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "masksam.validate_data", "--datalist", str(dataset), "--output", str(report)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    _label_path(dataset, 0).unlink()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert json.loads(report.read_text())["problems"][0]["message"] == "file not found"
