# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from masksam.auto3dseg.config import apply_overrides, read_algo_config, split_config_files


@pytest.fixture
def algo_folder(tmp_path: Path) -> Path:
    configs = tmp_path / "masksam_0" / "configs"
    configs.mkdir(parents=True)
    (configs / "a.yaml").write_text(yaml.safe_dump({"bundle_root": "/old", "max_epochs": 10, "val_interval": 5}))
    (configs / "b.yaml").write_text(yaml.safe_dump({"batch_size": 1, "train": {"lr": 0.1}}))
    return tmp_path / "masksam_0"


def test_split_config_files(algo_folder: Path) -> None:
    a, b = str(algo_folder / "configs" / "a.yaml"), str(algo_folder / "configs" / "b.yaml")
    assert split_config_files(f"{a},{b}") == [a, b], "comma-joined, as BundleAlgo passes them"
    assert split_config_files([a, Path(b)]) == [a, b]
    assert split_config_files(f" {a} ,") == [a]
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        split_config_files(f"{a},{algo_folder / 'missing.yaml'}")
    with pytest.raises(ValueError, match="no config"):
        split_config_files("")


def test_read_algo_config_follows_the_folder_and_maps_stock_names(algo_folder: Path) -> None:
    files = [str(p) for p in sorted((algo_folder / "configs").glob("*.yaml"))]
    parser = read_algo_config(
        ",".join(files), {"num_epochs": 2, "num_images_per_batch": 4, "train#lr": 0.5, "num_crops_per_image": 3}
    )
    assert parser["bundle_root"] == str(algo_folder), "the folder holding configs/, not the generation-time path"
    assert parser["max_epochs"] == 2 and parser["batch_size"] == 4 and parser["train"]["lr"] == 0.5
    assert parser["val_interval"] == 5 and "num_crops_per_image" not in parser
    assert read_algo_config(files, {"bundle_root": "/elsewhere"})["bundle_root"] == "/elsewhere"


def test_apply_overrides_reports_what_it_set(algo_folder: Path) -> None:
    parser = read_algo_config([str(algo_folder / "configs" / "a.yaml")])
    applied = apply_overrides(parser, {"num_epochs_per_validation": 1, "unknown": 3})
    assert applied == {"val_interval": 1} and parser["val_interval"] == 1
