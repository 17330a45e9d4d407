# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from masksam.auto3dseg.heuristics import (
    ct_window,
    datastats_value,
    in_plane_patch_size,
    intensity_normalization,
    median_resampled_shape,
    num_classes_from_labels,
    resampled_shape,
    target_spacing,
    template_settings,
    training_schedule,
    validation_interval,
)
from masksam.auto3dseg.method_heuristics import MA_SAM_SLICES, num_queries, num_slices
from tests.auto3dseg.conftest import CT_STATS, MRI_STATS


def test_ct_like_statistics_give_the_amos_recipe() -> None:
    settings = template_settings(CT_STATS, "CT", num_folds=5)
    assert settings == {
        "in_channels": 1,
        "num_classes": 16,
        "modality": "ct",
        "ct_window": [-160.0, 260.0],  # foreground percentiles 0.5 / 99.5
        "spacing": [0.8, 0.8, 2.5],  # the finer in-plane median, isotropic in-plane
        "patch_size": 512,  # 512 * 0.82 / 0.8 = 525 pixels: capped at 512
        "batch_size": 2,  # 192 training cases
        "max_epochs": 521,  # 96 steps per epoch: 50k steps
        "val_interval": 26,
    }
    depth = median_resampled_shape(CT_STATS, settings["spacing"])[2]
    assert num_slices(depth, 2.5 / 0.8) == 9, "MaskSAM: anisotropy 3.125, round(27 / 3.125) slices"
    assert num_queries(settings["num_classes"]) == 24, "the paper's 24 queries for AMOS"


def test_mri_like_statistics_give_z_score_and_capped_slices() -> None:
    settings = template_settings(MRI_STATS, {"0": "MRI", "1": "MRI"}, num_folds=5)
    assert settings == {
        "in_channels": 2,
        "num_classes": 4,
        "modality": "mri",
        "spacing": [1.0, 1.0, 1.0],
        "patch_size": 224,
        "batch_size": 1,
        "max_epochs": 1000,
        "val_interval": 50,
    }
    assert "ct_window" not in settings
    depth = median_resampled_shape(MRI_STATS, settings["spacing"])[2]
    assert num_slices(depth, 1.0) == 12, "MaskSAM: isotropic, 27 slices capped at 12"


def test_lite_medsam_patch_multiple() -> None:
    assert template_settings(MRI_STATS, "MRI", patch_multiple=64)["patch_size"] == 256


def test_datastats_value_names_the_missing_key() -> None:
    assert datastats_value(CT_STATS, "stats_summary#n_cases") == 240
    with pytest.raises(KeyError, match="image_foreground_stats"):
        template_settings({"stats_summary": {**CT_STATS["stats_summary"], "image_foreground_stats": {}}}, "CT")


@pytest.mark.parametrize(
    ("modality", "expected"),
    [("CT", "ct"), ("ct", "ct"), (" CT ", "ct"), ("MRI", "mri"), ("mr", "mri"), ("T2", "mri"), ({"0": "CT"}, "ct")],
)
def test_intensity_normalization(modality: str, expected: str) -> None:
    assert intensity_normalization(modality) == expected


@pytest.mark.parametrize("modality", ["", {}])
def test_intensity_normalization_rejects_empty(modality: str) -> None:
    with pytest.raises(ValueError, match="empty"):
        intensity_normalization(modality)


def test_ct_window() -> None:
    assert ct_window(-100, 200.5) == [-100.0, 200.5]
    assert ct_window(40.0, 40.0) == [40.0, 41.0], "a constant foreground gets a unit window"
    with pytest.raises(ValueError, match="finite"):
        ct_window(float("nan"), 1.0)


def test_target_spacing() -> None:
    assert target_spacing([0.8, 0.7, 5.0]) == [0.7, 0.7, 5.0]
    assert target_spacing([1.0, 1.0, 0.5]) == [1.0, 1.0, 0.5], "the slice axis may be the finest"
    with pytest.raises(ValueError, match="3D"):
        target_spacing([1.0, 1.0])
    with pytest.raises(ValueError, match="positive"):
        target_spacing([1.0, 0.0, 1.0])


def test_resampled_shape() -> None:
    assert resampled_shape([512, 400, 40], [0.8, 0.8, 5.0], [0.8, 0.8, 2.5]) == [512, 400, 80]
    assert resampled_shape([3, 3, 1], [1.0, 1.0, 1.0], [4.0, 4.0, 4.0]) == [1, 1, 1]
    with pytest.raises(ValueError, match="equal lengths"):
        resampled_shape([1, 2], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0])


@pytest.mark.parametrize(
    ("hw", "kwargs", "expected"),
    [
        ((300, 280), {}, 304),  # rounded up to a multiple of 16
        ((256, 256), {}, 256),
        ((900, 700), {}, 512),  # capped
        ((20, 36), {}, 64),  # at least min_size
        ((300, 280), {"multiple": 64}, 320),
        ((900, 900), {"multiple": 64, "max_size": 500}, 448),  # the largest multiple below max_size
    ],
)
def test_in_plane_patch_size(hw: tuple[int, int], kwargs: dict, expected: int) -> None:
    size = in_plane_patch_size(hw, **kwargs)
    assert size == expected and size % kwargs.get("multiple", 16) == 0


def test_in_plane_patch_size_rejects_bad_bounds() -> None:
    with pytest.raises(ValueError, match="multiple"):
        in_plane_patch_size((64, 64), multiple=16, min_size=64, max_size=32)


@pytest.mark.parametrize(
    ("depth", "anisotropy", "expected"),
    [
        (100, 3.0, 9),  # the reference recipe
        (100, 1.0, 12),  # isotropic: capped
        (100, 6.25, 4),  # 5 mm slices at 0.8 mm
        (100, 20.0, 3),  # very thick slices: at least 3
        (5, 1.0, 5),  # thin volume: at most its depth
        (1, 1.0, 1),  # 2D images
    ],
)
def test_num_slices(depth: int, anisotropy: float, expected: int) -> None:
    assert num_slices(depth, anisotropy) == expected


def test_num_slices_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="depth"):
        num_slices(0, 1.0)
    with pytest.raises(ValueError, match="anisotropy"):
        num_slices(10, 0.0)
    with pytest.raises(ValueError, match="reference_slices"):
        num_slices(10, 1.0, reference_slices=0)
    with pytest.raises(ValueError, match="reference_anisotropy"):
        num_slices(10, 1.0, reference_anisotropy=0.0)
    with pytest.raises(ValueError, match="min_slices"):
        num_slices(10, 1.0, min_slices=6, max_slices=5)


@pytest.mark.parametrize(
    ("depth", "anisotropy", "expected"),
    [(100, 3.0, 5), (100, 1.0, 5), (100, 20.0, 5), (4, 1.0, 4), (1, 1.0, 1)],
)
def test_num_slices_of_a_fixed_stack(depth: int, anisotropy: float, expected: int) -> None:
    """MA-SAM: the paper's 5 slices whatever the anisotropy, fewer only in thinner volumes."""
    assert num_slices(depth, anisotropy, reference_slices=MA_SAM_SLICES, reference_anisotropy=None) == expected


@pytest.mark.parametrize(("k", "q"), [(2, 6), (3, 7), (8, 12), (16, 24), (40, 60)])
def test_num_queries_leave_a_margin(k: int, q: int) -> None:
    assert num_queries(k) == q and q >= k + 4


def test_num_queries_rejects_a_single_class() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        num_queries(1)


def test_num_classes_from_labels() -> None:
    assert num_classes_from_labels([0, 2, 1]) == 3
    with pytest.raises(ValueError, match="consecutive"):
        num_classes_from_labels([0, 1, 3])
    with pytest.raises(ValueError, match="consecutive"):
        num_classes_from_labels([1, 2])
    with pytest.raises(ValueError, match="consecutive"):
        num_classes_from_labels([0])


def test_training_schedule_scales_with_the_dataset() -> None:
    small = training_schedule(20, num_folds=5)  # 16 training cases: 16 steps per epoch
    assert small == {"batch_size": 1, "max_epochs": 1000, "val_interval": 50}
    large = training_schedule(500, num_folds=5)  # 400 training cases, 2 per batch: 200 steps per epoch
    assert large == {"batch_size": 2, "max_epochs": 250, "val_interval": 12}
    huge = training_schedule(100_000, num_folds=5)
    assert huge["max_epochs"] == 50, "at least min_epochs"
    assert training_schedule(1, num_folds=5)["batch_size"] == 1
    assert training_schedule(64, num_folds=1)["batch_size"] == 2, "without folds every case trains"
    assert training_schedule(64, num_folds=5)["batch_size"] == 1
    with pytest.raises(ValueError, match="n_cases"):
        training_schedule(0)
    with pytest.raises(ValueError, match="min_epochs"):
        training_schedule(10, min_epochs=10, max_epochs=5)


def test_validation_interval() -> None:
    assert [validation_interval(e) for e in (1, 19, 20, 100, 1000)] == [1, 1, 1, 5, 50]
    assert validation_interval(100, validations=3) == 33
    with pytest.raises(ValueError, match="max_epochs"):
        validation_interval(0)


def test_keys_exist_in_real_datastats(tmp_path: Path) -> None:
    """Every statistics key the settings read is written by MONAI's DataAnalyzer (run on a synthetic dataset)."""
    from monai.apps.auto3dseg import DataAnalyzer

    from masksam.data.synthetic import make_synthetic_dataset

    datalist = make_synthetic_dataset(tmp_path, num_cases=2, shape=(24, 20, 6), num_classes=3, num_folds=2, num_test=0)
    out = tmp_path / "datastats.yaml"
    DataAnalyzer(str(datalist), str(tmp_path), output_path=str(out), device="cpu", worker=0).get_all_case_stats()
    stats = yaml.safe_load(out.read_text())
    settings = template_settings(stats, "CT", num_folds=2)
    assert settings["num_classes"] == 3 and settings["spacing"] == [1.0, 1.0, 2.0]
    assert median_resampled_shape(stats, settings["spacing"]) == [24, 20, 6]
    lo, hi = settings["ct_window"]
    assert -200.0 < lo < hi < 200.0, "foreground percentiles of the synthetic HU values"
