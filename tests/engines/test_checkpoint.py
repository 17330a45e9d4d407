# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ignite.engine import Engine

from masksam.engines import TrainingCheckpointHandler, latest_checkpoint


def train(ckpt_dir: Path, max_epochs: int, n_saved: int = 1) -> Engine:
    """A 2-iteration-per-epoch ignite run with the handler attached (resuming from ``ckpt_dir``)."""
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def step(engine: Engine, batch: torch.Tensor) -> float:
        optimizer.zero_grad()
        loss = model(batch).pow(2).mean()
        loss.backward()
        optimizer.step()
        return loss.item()

    engine = Engine(step)
    handler = TrainingCheckpointHandler(str(ckpt_dir), {"model": model, "optimizer": optimizer}, n_saved=n_saved)
    handler.attach(engine)
    engine.run([torch.ones(1, 2), torch.zeros(1, 2)], max_epochs=max_epochs)
    return engine


def numbers(ckpt_dir: Path) -> list[int]:
    return sorted(int(p.stem.split("_")[1]) for p in ckpt_dir.glob("checkpoint_*.pt"))


def test_a_resumed_run_keeps_the_newest_n_of_all_runs(tmp_path: Path) -> None:
    train(tmp_path, max_epochs=3)
    assert numbers(tmp_path) == [3]
    engine = train(tmp_path, max_epochs=5)  # resumes after epoch 3
    assert engine.state.epoch == 5
    assert numbers(tmp_path) == [5], "the first run's checkpoint_3.pt is removed too"
    train(tmp_path, max_epochs=8, n_saved=2)
    assert numbers(tmp_path) == [7, 8]


def test_checkpoints_of_later_epochs_and_other_files_are_left_alone(tmp_path: Path) -> None:
    for name in ("checkpoint_9.pt", "checkpoint_best.pt", "model.pt"):
        (tmp_path / name).write_bytes(b"")
    handler = TrainingCheckpointHandler(str(tmp_path), {}, n_saved=1)
    for epoch in (1, 2):
        (tmp_path / f"checkpoint_{epoch}.pt").write_bytes(b"")
    assert handler.prune(2) == [str(tmp_path / "checkpoint_1.pt")]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint_2.pt", "checkpoint_9.pt", "checkpoint_best.pt", "model.pt",
    ]  # fmt: skip
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint_9.pt")


def test_n_saved_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="got 1 and 0"):
        TrainingCheckpointHandler(str(tmp_path), {}, n_saved=0)
