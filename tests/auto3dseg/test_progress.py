# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser

from masksam.auto3dseg.progress import ProgressWriter, read_best_score


def validate(writer: ProgressWriter, epoch: int, dice: float) -> None:
    writer(SimpleNamespace(state=SimpleNamespace(epoch=epoch, metrics={"val_mean_dice": dice})))


def test_records_improvements_best_last_as_auto3dseg_reads_them(tmp_path: Path) -> None:
    engine = Engine(lambda e, b: None)
    writer = ProgressWriter(str(tmp_path / "model"))
    writer.attach(engine)
    assert engine.has_event_handler(writer, Events.EPOCH_COMPLETED)
    for epoch, dice in [(1, float("nan")), (2, 0.4), (3, 0.3), (4, 0.4), (5, 0.7)]:
        validate(writer, epoch, dice)
    records = yaml.safe_load((tmp_path / "model" / "progress.yaml").read_text())
    assert [(r["best_epoch"], r["best_avg_dice_score"]) for r in records] == [(1, 0.0), (2, 0.4), (5, 0.7)]
    # BundleAlgo.get_score's reading of the file:
    assert ConfigParser.load_config_file(str(tmp_path / "model" / "progress.yaml"))[-1]["best_avg_dice_score"] == 0.7
    assert read_best_score(tmp_path / "model") == 0.7
    assert not list((tmp_path / "model").glob("*.tmp")), "written atomically"


def test_a_new_run_starts_a_new_record(tmp_path: Path) -> None:
    first = ProgressWriter(str(tmp_path))
    first.attach(Engine(lambda e, b: None))
    validate(first, 1, 0.9)
    again = ProgressWriter(str(tmp_path))
    again.attach(Engine(lambda e, b: None))
    validate(again, 6, 0.5)
    assert read_best_score(tmp_path) == 0.5, "the score of the model.pt this run saved"


def test_read_best_score_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="validation"):
        read_best_score(tmp_path)
    (tmp_path / "progress.yaml").write_text("[]\n")
    with pytest.raises(ValueError, match="no validation record"):
        read_best_score(tmp_path)
