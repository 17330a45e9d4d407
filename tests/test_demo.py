# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from masksam.demo import BUNDLES, METHODS, _train, budget_note, dice_per_class, run_demo
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


#: Settings the demo gives training and inference separately.
RUN_SETTINGS = {"bundle_root", "dataset_dir", "amp"}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_demo_settings_name_real_bundle_settings(tmp_path: Path, name: str) -> None:
    method = METHODS[name]
    train = yaml.safe_load((BUNDLES / method.bundle / "configs" / "train.yaml").read_text())
    infer = yaml.safe_load((BUNDLES / method.bundle / "configs" / "inference.yaml").read_text())
    overrides = method.overrides(tmp_path, tmp_path, "lite_medsam.pth", 3)
    assert set(overrides) <= set(train), f"unknown settings: {set(overrides) - set(train)}"
    assert overrides["modality"] in INTENSITY_PRESETS
    assert overrides["backbone"] == "lite_medsam" and overrides["sam_checkpoint"] == "lite_medsam.pth"
    inferred = set(method.infer_keys) | set(method.infer_settings)
    assert inferred <= set(infer), f"unknown inference settings: {inferred - set(infer)}"
    missing = [k for k in infer if k in train and k in overrides and k not in inferred and k not in RUN_SETTINGS]
    assert missing == [], f"trained with settings the inference config would not get: {missing}"


def test_unknown_method_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown demo method 'sam3'"):
        run_demo(str(tmp_path), method="sam3")


#: Tiny settings of each prompted demo method, for its path end to end on a synthetic volume.
TINY_PROMPTED = {
    "med_sa": {"patch_size": 32, "decoder_adapter_dim": 8, "hyper_hidden_dim": 8},
    "sam_unet": {"patch_size": 64},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY_PROMPTED))
def test_prompted_demo_scores_each_protocol_after_training_and_zero_shot_where_untrained_is_lite_medsam(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """A prompted method's path of the demo end to end, on a synthetic volume with the tiny backbone."""
    import dataclasses

    import masksam.data
    from masksam import demo
    from masksam.data.synthetic import make_synthetic_dataset

    make_synthetic_dataset(tmp_path / "data", num_cases=2, shape=(40, 36, 8), num_classes=3, num_folds=2, num_test=0)
    image = next((tmp_path / "data" / "imagesTr").glob("*.nii.gz"))
    label = tmp_path / "data" / "labelsTr" / image.name
    method = METHODS[name]

    def tiny(work_dir: Path, dataset_dir: Path, checkpoint: str, epochs: int) -> dict:
        settings = method.overrides(work_dir, dataset_dir, checkpoint, epochs)
        return {**settings, "backbone": "tiny", "sam_checkpoint": None, "num_classes": 3, **TINY_PROMPTED[name]}

    monkeypatch.setattr(masksam.data, "class_names", lambda: ["background", "a", "b"])
    result = demo._run_prompted(
        dataclasses.replace(method, overrides=tiny), tmp_path / "out", tmp_path / "data", image, label, 2, 600
    )
    assert result["epochs"] == 2 and set(result["dice"]) == {"a", "b"}
    stages = ("zero_shot", "fine_tuned") if method.zero_shot else ("fine_tuned",)
    assert [s for s in ("zero_shot", "fine_tuned") if result["protocols"][s]] == list(stages)
    for stage in stages:
        assert set(result["protocols"][stage]) == set(method.protocols)
        assert all(0.0 <= d <= 1.0 for scores in result["protocols"][stage].values() for d in scores)
    assert result["protocols"]["fine_tuned"]["box"] == list(result["dice"].values())
    assert (tmp_path / "out" / "overlay.png").is_file() and (tmp_path / "out" / "training_curves.png").is_file()


def test_prompted_demo_methods_are_scored_under_box_prompts() -> None:
    """The all-methods table reports a prompted method's box Dice: every prompted method has that protocol."""
    from masksam.transforms import PROMPT_PROTOCOLS

    prompted = {n: m for n, m in METHODS.items() if m.prompted}
    assert set(prompted) == {"med_sa", "sam_unet"}
    assert all("box" in m.protocols and set(m.protocols) <= set(PROMPT_PROTOCOLS) for m in prompted.values())
    assert METHODS["med_sa"].zero_shot and not METHODS["sam_unet"].zero_shot


def test_budget_note_says_how_many_planned_epochs_ran() -> None:
    result = {"epochs": 120, "planned_epochs": 180, "budget_stopped": True, "time_budget_s": 540.0}
    assert budget_note(result).startswith("training stopped at the 9-min time budget after 120 of the 180 planned")
    assert budget_note({**result, "epochs": 180, "budget_stopped": False}) == ""


def test_the_time_budget_stops_training_and_says_so(tmp_path: Path) -> None:
    from masksam.data.synthetic import make_synthetic_dataset
    from tests.bundles.conftest import TINY_TRAIN_OVERRIDES

    make_synthetic_dataset(tmp_path / "data", num_cases=2, shape=(40, 36, 12), num_classes=3, num_folds=2)
    overrides = {**TINY_TRAIN_OVERRIDES, "dataset_dir": str(tmp_path / "data"), "bundle_root": str(tmp_path / "run"),
                 "max_epochs": 3, "val_interval": 4, "use_tensorboard": False}  # fmt: skip
    history, stopped = _train(BUNDLES / "masksam", overrides, time_budget_s=0.0)
    assert stopped and len(history["train loss"]) == 1
