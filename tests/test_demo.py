# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from masksam.demo import BUNDLE, demo_overrides, dice_per_class
from masksam.transforms import INTENSITY_PRESETS


def test_dice_per_class() -> None:
    label = np.zeros((4, 4, 2), dtype=int)
    label[:2, :2] = 1
    pred = np.zeros_like(label)
    pred[:2, :1] = 1
    pred[3, 3] = 2
    scores = dice_per_class(pred, label, 4)
    assert scores[0] == 2 * 4 / (4 + 8)
    assert scores[1] == 0.0, "predicted but absent"
    assert np.isnan(scores[2]), "absent from both"


def test_demo_overrides_name_real_bundle_settings(tmp_path: Path) -> None:
    config = yaml.safe_load((BUNDLE / "configs" / "train.yaml").read_text())
    overrides = demo_overrides(tmp_path, tmp_path, "lite_medsam.pth", epochs=3)
    assert set(overrides) <= set(config), f"unknown settings: {set(overrides) - set(config)}"
    assert overrides["modality"] in INTENSITY_PRESETS
