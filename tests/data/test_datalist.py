# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import json
from pathlib import Path

import pytest

from masksam.data.datalist import split_items


@pytest.fixture
def datalist(tmp_path: Path) -> Path:
    for name in ("a", "b", "c", "v"):
        for kind in ("img", "lab"):
            (tmp_path / f"{kind}_{name}.nii.gz").touch()
    item = {"image": "img_{}.nii.gz", "label": "lab_{}.nii.gz"}
    data = {
        "training": [
            {k: v.format(n) for k, v in item.items()} | {"fold": f} for n, f in (("a", 0), ("b", 1), ("c", 1))
        ],
        "validation": [{k: v.format("v") for k, v in item.items()}],
    }
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(data))
    return path


def names(items: list[dict]) -> list[str]:
    return [Path(i["image"]).name for i in items]


def test_a_validation_list_replaces_the_folds_unless_told_otherwise(datalist: Path) -> None:
    train, val = split_items(datalist, fold=0)
    assert names(train) == ["img_a.nii.gz", "img_b.nii.gz", "img_c.nii.gz"] and names(val) == ["img_v.nii.gz"]
    # Auto3DSeg's cross-validation: the folds decide (as monai.auto3dseg.datafold_read)
    train, val = split_items(datalist, fold=1, validation_list=False)
    assert names(train) == ["img_a.nii.gz"] and names(val) == ["img_b.nii.gz", "img_c.nii.gz"]
    with pytest.raises(ValueError, match="no 'validation' list and no training item of fold 2"):
        split_items(datalist, fold=2, validation_list=False)
