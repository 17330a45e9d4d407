# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ignite.engine import Engine
from torch import nn

from masksam.backbones import CheckpointError
from masksam.engines import ModelWeightsLoader, check_state_dict
from masksam.inferers import SemanticWrapper
from masksam.networks import build_masksam


def tiny(**kw) -> nn.Module:
    settings = {
        "backbone": "tiny", "image_size": 32, "num_slices": 4, "num_queries": 3, "num_classes": 3,
        "generator_widths": [32, 16, 16, 8, 8], "mask_head_channels": 8, **kw,
    }  # fmt: skip
    return SemanticWrapper(build_masksam(**settings))


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    torch.manual_seed(0)
    model = tiny()
    path = tmp_path_factory.mktemp("weights") / "model.pt"
    torch.save(model.state_dict(), path)
    return model, path


def run_loader(path: Path, network: nn.Module) -> None:
    ModelWeightsLoader(path, network)(Engine(lambda e, b: None))


def test_loads_plain_and_training_checkpoints(saved: tuple[nn.Module, Path], tmp_path: Path) -> None:
    model, path = saved
    fresh = tiny()
    run_loader(path, fresh)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value)
    full = tmp_path / "checkpoint_3.pt"
    torch.save({"model": model.state_dict(), "optimizer": {"state": {}, "param_groups": []}}, full)
    other = nn.DataParallel(tiny())  # a wrapped network loads the plain state dict
    run_loader(full, other)
    other = other.module
    torch.testing.assert_close(
        other.state_dict()["network.decoder.class_head.token"], model.state_dict()["network.decoder.class_head.token"]
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"num_classes": 4}, r"trained with num_classes=3, this config has 4 \(set --num_classes 3\)"),
        ({"num_queries": 5}, r"trained with num_queries=3, this config has 5 \(set --num_queries 3\)"),
        ({"num_slices": 2}, r"trained with num_slices=4, this config has 2 \(set --num_slices 4\)"),
        ({"in_channels": 2}, r"trained with in_channels=1, this config has 2 \(set --in_channels 1\)"),
        ({"image_size": 64}, r"trained with patch_size=32, this config has 64 \(set --patch_size 32\)"),
        (
            {"backbone": "lite_medsam", "image_size": 64, "generator_widths": None},
            r"trained with backbone='tiny', this config has 'lite_medsam' \(set --backbone tiny\)",
        ),
    ],
)
def test_another_setting_is_named(saved: tuple[nn.Module, Path], settings: dict, message: str) -> None:
    _, path = saved
    with pytest.raises(CheckpointError, match=message) as info:
        run_loader(path, tiny(**settings))
    assert str(path) in str(info.value) and "built with other settings than this config's network" in str(info.value)


def test_every_differing_setting_is_listed_with_its_override(saved: tuple[nn.Module, Path]) -> None:
    _, path = saved
    with pytest.raises(CheckpointError) as info:
        run_loader(path, tiny(num_classes=4, generator_widths=[16, 8, 8, 8, 8]))
    message = str(info.value)
    assert "trained with num_classes=3" in message
    assert "trained with generator_widths=[32, 16, 16, 8, 8], this config has [16, 8, 8, 8, 8] " in message
    assert '(set --generator_widths "[32,16,16,8,8]")' in message


def test_weights_saved_before_settings_were_recorded_still_load(
    saved: tuple[nn.Module, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model, _ = saved
    old = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    path = tmp_path / "old.pt"
    torch.save(old, path)
    fresh = tiny()
    run_loader(path, fresh)
    assert "holds no build settings" in caplog.text
    torch.testing.assert_close(fresh.state_dict()["network.stem.out.weight"], old["network.stem.out.weight"])
    with pytest.raises(CheckpointError, match=r"class_head.linear.weight: checkpoint \(4, 64\), model \(5, 64\)"):
        run_loader(path, tiny(num_classes=4))  # without settings, the shapes still catch it


def test_another_network_is_named(saved: tuple[nn.Module, Path], tmp_path: Path) -> None:
    _, path = saved
    with pytest.raises(CheckpointError, match=r"keys of the model are not in the checkpoint .*check --backbone"):
        run_loader(path, nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(CheckpointError, match=r"model weights not found: .*nowhere\.pt.*Train the bundle first"):
        run_loader(tmp_path / "nowhere.pt", tiny())


def test_missing_model_pt_points_at_the_last_training_checkpoint(saved: tuple[nn.Module, Path], tmp_path: Path) -> None:
    """A run that trained but never validated has checkpoints and no model.pt: say why, and how to use them."""
    model, _ = saved
    for epoch in (2, 10):
        torch.save({"model": model.state_dict()}, tmp_path / f"checkpoint_{epoch}.pt")
    with pytest.raises(CheckpointError) as info:
        ModelWeightsLoader(tmp_path / "model.pt", tiny(), path_setting="model_path")(Engine(lambda e, b: None))
    message = str(info.value)
    assert "model.pt is written by validation during training" in message
    last = tmp_path / "checkpoint_10.pt"
    assert f"The last training checkpoint there is {last}: use it with --model_path {last}" in message
    ModelWeightsLoader(last, tiny())(Engine(lambda e, b: None))  # and that works


def test_check_state_dict_accepts_a_matching_state() -> None:
    model = nn.Linear(3, 2)
    check_state_dict(model, model.state_dict(), "x")
    with pytest.raises(CheckpointError, match=r"(?s)x does not fit.*weight: checkpoint \(2, 4\), model \(2, 3\)"):
        check_state_dict(model, nn.Linear(4, 2).state_dict(), "x")


def test_resume_under_another_setting_names_the_file_and_the_setting(
    saved: tuple[nn.Module, Path], tmp_path: Path
) -> None:
    """The training state of a run with num_classes=3, resumed by a config with 4: the checkpoint and the
    setting are named before anything is loaded (PyTorch alone reports a size mismatch of some tensor)."""
    from masksam.engines import TrainingCheckpointHandler

    model, _ = saved
    trainer_state = {"epoch": 2, "epoch_length": 1, "max_epochs": 5}
    torch.save({"model": model.state_dict(), "trainer": trainer_state}, tmp_path / "checkpoint_2.pt")
    other = tiny(num_classes=4)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    handler = TrainingCheckpointHandler(str(tmp_path), {"model": other})
    trainer = Engine(lambda e, b: None)
    handler.attach(trainer)
    with pytest.raises(CheckpointError, match=r"checkpoint_2\.pt.*\n.*trained with num_classes=3, this config has 4"):
        handler.load(trainer)
    for key, value in other.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed before the error"
    same = tiny()
    handler = TrainingCheckpointHandler(str(tmp_path), {"model": same})
    handler.attach(trainer)
    handler.load(trainer)  # the same settings resume
    torch.testing.assert_close(
        same.state_dict()["network.stem.out.weight"], model.state_dict()["network.stem.out.weight"]
    )
