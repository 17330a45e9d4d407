# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""The MaskSAM bundle's recipe settings default to the research code's values (METHODS.md §1b-1c) and take effect."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.engines.utils import IterationEvents
from monai.transforms import ScaleIntensityRanged

from masksam.engines import GradientClipHandler
from masksam.inferers import MirroredInferer
from tests.bundles.conftest import REPO, TINY_TRAIN, copy_bundle, run_bundle

pytestmark = pytest.mark.xdist_group("masksam_bundle")

CONFIGS = REPO / "bundles" / "masksam" / "configs"


def parser(*files: str, **overrides: object) -> ConfigParser:
    """The bundle's configs parsed (nothing instantiated until asked), with ``overrides`` set."""
    config = ConfigParser()
    config.read_config([str(CONFIGS / f) for f in files])
    for key, value in overrides.items():
        config[key] = value
    return config


def test_point_counts_default_to_half_the_patch_pixels() -> None:
    """AMOS (512 x 512 patches): 2 x 256^2 points in the matcher and the criterion; Synapse/ACDC (256): 2 x 128^2."""
    for patch, points in ((512, 2 * 256**2), (256, 2 * 128**2)):
        criterion = parser("train.yaml", patch_size=patch).get_parsed_content("loss").criterion
        assert criterion.num_points == criterion.matcher.num_points == points


def test_gradient_clipping_runs_before_each_step(tmp_path: Path, synthetic_dataset: Path) -> None:
    """Through the bundle's own trainer: clipping at 12 (the default) registered on BACKWARD_COMPLETED; null: none."""
    from monai.bundle import ConfigWorkflow

    bundle = copy_bundle("masksam", tmp_path)
    tiny = dict(zip(TINY_TRAIN[::2], TINY_TRAIN[1::2], strict=True))
    overrides = {k.lstrip("-"): _literal(v) for k, v in tiny.items()}
    for setting, norm in (({}, 12.0), ({"grad_clip_norm": 0}, None)):
        workflow = ConfigWorkflow(
            config_file=str(bundle / "configs" / "train.yaml"),
            workflow_type="train",
            bundle_root=str(bundle),
            dataset_dir=str(synthetic_dataset),
            **overrides,
            **setting,
        )
        workflow.initialize()
        trainer = workflow.parser.get_parsed_content("train#trainer")
        (clip,) = [
            h for h in workflow.parser.get_parsed_content("train#handlers") if isinstance(h, GradientClipHandler)
        ]
        assert clip.max_norm == norm
        assert trainer.has_event_handler(clip, IterationEvents.BACKWARD_COMPLETED) == (norm is not None)


def _literal(value: str) -> object:
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def test_an_epoch_is_iterations_per_epoch_steps(tmp_path: Path, synthetic_dataset: Path) -> None:
    """nnU-Net's epochs: 250 steps by default; 3 here, over a training list of 2 volumes (the loader restarts)."""
    assert parser("train.yaml")["iterations_per_epoch"] == 250
    bundle = copy_bundle("masksam", tmp_path)
    run_bundle(
        bundle, "run", "--config_file", "configs/train.yaml", "--dataset_dir", str(synthetic_dataset),
        "--max_epochs", "1", *TINY_TRAIN, "--iterations_per_epoch", "3", "--val_interval", "2",
    )  # fmt: skip
    state = torch.load(bundle / "models" / "checkpoint_1.pt", map_location="cpu", weights_only=True)
    assert state["trainer"]["epoch_length"] == 3 and state["trainer"]["iteration"] == 3


def test_mirroring_tta_is_on_in_inference_and_evaluation_and_switchable() -> None:
    infer = parser("inference.yaml").get_parsed_content("inferer")
    assert isinstance(infer, MirroredInferer) and infer.enabled and len(infer.combinations) == 7
    assert not parser("inference.yaml", mirror_tta=False).get_parsed_content("inferer").enabled
    evaluate = parser("train.yaml", "evaluate.yaml").get_parsed_content("validate#inferer")
    assert isinstance(evaluate, MirroredInferer) and evaluate.enabled and len(evaluate.combinations) == 7
    assert not parser("train.yaml", "evaluate.yaml", mirror_tta=False).get_parsed_content("validate#inferer").enabled
    assert not parser("train.yaml").get_parsed_content("validate#inferer").enabled, "training's validation: no TTA"


@pytest.mark.parametrize("config", ["train.yaml", "inference.yaml"])
def test_ct_zscore_preset_reaches_the_transforms(config: str) -> None:
    overrides = {"modality": "ct_zscore", "ct_window": [-100.0, 300.0], "ct_mean_std": [50.0, 80.0]}
    key = "load_transforms" if config == "train.yaml" else "preprocessing"
    transforms = parser(config, **overrides).get_parsed_content(key)
    transforms = transforms if isinstance(transforms, list) else transforms.transforms
    scale = transforms[-1]
    assert isinstance(scale, ScaleIntensityRanged)
    assert (scale.scaler.a_min, scale.scaler.a_max) == (-100.0, 300.0)
    assert (scale.scaler.b_min, scale.scaler.b_max) == pytest.approx(((-100.0 - 50) / 80, (300.0 - 50) / 80))


def test_intensity_stats_command_prints_the_ct_zscore_settings(tmp_path: Path, synthetic_dataset: Path) -> None:
    bundle = copy_bundle("masksam", tmp_path)
    proc = run_bundle(
        bundle, "run", "intensity_stats", "--config_file", "configs/train.yaml",
        "--dataset_dir", str(synthetic_dataset), *TINY_TRAIN,
    )  # fmt: skip
    line = next(ln for ln in proc.stdout.splitlines() if "ct_mean_std" in ln)
    stats = ast.literal_eval(line[line.index("{") :])
    assert len(stats["ct_window"]) == 2 and stats["ct_window"][0] < stats["ct_window"][1]
    assert stats["ct_mean_std"][1] > 0
