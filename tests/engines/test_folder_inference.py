# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator
from monai.transforms import Compose, EnsureChannelFirstd, SaveImaged

from masksam.engines import CASE_ERROR_KEY, CaseReport, NewFilesLayout, OutputExistsError, TolerantDataset
from masksam.transforms.validation import CheckedLoadImaged


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """Three tiny NIfTI images, the middle one truncated."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a", "b", "c"):
        nib.save(nib.Nifti1Image(np.random.rand(6, 5, 4).astype(np.float32), np.eye(4)), inputs / f"{name}.nii.gz")
    data = (inputs / "b.nii.gz").read_bytes()
    (inputs / "b.nii.gz").write_bytes(data[: len(data) // 2])
    return inputs


def infer(folder: Path, out: Path) -> CaseReport:
    """Folder inference as the bundles wire it, with an identity network."""
    load = Compose([CheckedLoadImaged(keys="image"), EnsureChannelFirstd(keys="image")])
    items = [{"image": str(p)} for p in sorted(folder.glob("*.nii.gz"))]
    report = CaseReport(out)
    save = SaveImaged(
        keys="pred",
        folder_layout=NewFilesLayout(output_dir=out, postfix="seg", extension=".nii.gz", makedirs=True),
    )
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(TolerantDataset(items, load), batch_size=1, num_workers=0),
        network=torch.nn.Identity(),
        postprocessing=save,
        val_handlers=[report],
        iteration_update=report,
    )
    evaluator.run()
    return report


def test_tolerant_dataset_turns_a_load_error_into_an_item_naming_file_and_reason(folder: Path) -> None:
    load = CheckedLoadImaged(keys="image")
    dataset = TolerantDataset([{"image": str(folder / "a.nii.gz")}, {"image": str(folder / "b.nii.gz")}], load)
    assert CASE_ERROR_KEY not in dataset[0]
    bad = dataset[1]
    assert bad["case"] == str(folder / "b.nii.gz")
    assert bad[CASE_ERROR_KEY].startswith(f"{folder / 'b.nii.gz'} [image]: cannot read the file")


def test_new_files_layout_refuses_an_existing_file(tmp_path: Path) -> None:
    layout = NewFilesLayout(output_dir=tmp_path, postfix="seg", extension=".nii.gz")
    path = Path(layout.filename(subject="case"))
    assert path == tmp_path / "case_seg.nii.gz"
    path.write_bytes(b"x")
    with pytest.raises(OutputExistsError, match="case_seg.nii.gz exists: not overwritten"):
        layout.filename(subject="case")


def test_a_bad_case_is_reported_and_the_others_are_written(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = infer(folder, out)
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["a_seg.nii.gz", "c_seg.nii.gz"]
    with pytest.raises(SystemExit) as info:
        report.finish()
    summary = str(info.value.code)
    assert summary.startswith(
        f"inference: 3 case(s): 2 written to {out}, 1 FAILED; listed in {out / 'failed_cases.csv'}"
    )
    assert f"failed: {folder / 'b.nii.gz'}: [image]: cannot read the file" in summary
    rows = list(csv.DictReader((out / "failed_cases.csv").open()))
    assert [(r["file"], r["status"]) for r in rows] == [(str(folder / "b.nii.gz"), "failed")]

    # Again into the same folder: nothing is overwritten, the written cases are skipped, the CSV gets a new name.
    before = (out / "a_seg.nii.gz").read_bytes()
    report = infer(folder, out)
    with pytest.raises(SystemExit):
        report.finish()
    assert (out / "a_seg.nii.gz").read_bytes() == before
    rows = list(csv.DictReader((out / "failed_cases_2.csv").open()))
    assert sorted(r["status"] for r in rows) == ["failed", "skipped", "skipped"]
    assert len(list(csv.DictReader((out / "failed_cases.csv").open()))) == 1, "the first CSV is kept"


def test_finish_without_failures_returns(folder: Path, tmp_path: Path) -> None:
    (folder / "b.nii.gz").unlink()
    report = infer(folder, tmp_path / "out")
    report.finish()  # no SystemExit
    assert not (tmp_path / "out" / "failed_cases.csv").exists()
    assert report.summary() == f"inference: 2 case(s): 2 written to {tmp_path / 'out'}"


def test_csv_name_must_be_a_csv(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="csv_name must end with .csv, got 'report.txt'"):
        CaseReport(tmp_path, csv_name="report.txt")
