# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""``progress.yaml``: the validation record Auto3DSeg ranks algorithms by."""

from __future__ import annotations

import math
import os
import time
from typing import Any

import yaml
from ignite.engine import Engine, Events

__all__ = ["PROGRESS_FILE", "read_best_score", "write_progress", "ProgressWriter"]

#: File name under ``ckpt_path``; ``BundleAlgo.get_score`` reads ``[-1]["best_avg_dice_score"]`` from it.
PROGRESS_FILE = "progress.yaml"


def read_best_score(ckpt_path: str | os.PathLike[str]) -> float:
    """Best validation score in ``<ckpt_path>/progress.yaml`` (its last record), as ``BundleAlgo.get_score`` reads it."""
    path = os.path.join(os.fspath(ckpt_path), PROGRESS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: the algorithm has not completed a validation yet")
    with open(path) as f:
        records = yaml.safe_load(f) or []
    if not records:
        raise ValueError(f"{path} holds no validation record")
    return float(records[-1]["best_avg_dice_score"])


def write_progress(ckpt_path: str | os.PathLike[str], records: list[dict[str, Any]]) -> str:
    """Write ``<ckpt_path>/progress.yaml`` atomically (folder created if needed); returns its path.

    Args:
        ckpt_path: folder of ``progress.yaml``.
        records: ``{"best_avg_dice_score", "best_epoch", "time"}`` records, the best one last.
    """
    os.makedirs(ckpt_path, exist_ok=True)
    path = os.path.join(os.fspath(ckpt_path), PROGRESS_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        yaml.safe_dump(records, f, sort_keys=False)
    os.replace(tmp, path)
    return path


class ProgressWriter:
    """Append a record to ``<ckpt_path>/progress.yaml`` whenever the validation metric improves.

    The file is a YAML list of ``{"best_avg_dice_score", "best_epoch", "time"}`` records, the best one last, as
    Auto3DSeg's ``BundleAlgo.get_score`` expects. It is rewritten atomically. Like MONAI's ``CheckpointSaver``
    (whose best model is ``model.pt``), each run starts a new list, so the score is always that of ``model.pt``.
    Attach it to the evaluator (rank 0 only under DDP). A NaN metric (no foreground anywhere) counts as 0.

    Args:
        ckpt_path: folder of ``progress.yaml`` (created if needed).
        metric_name: key of ``engine.state.metrics`` to rank by (mean Dice).
    """

    def __init__(self, ckpt_path: str, metric_name: str = "val_mean_dice") -> None:
        self.ckpt_path = ckpt_path
        self.metric_name = metric_name
        self.path = os.path.join(ckpt_path, PROGRESS_FILE)
        self.records: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        os.makedirs(self.ckpt_path, exist_ok=True)
        self.records = []
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    @property
    def best(self) -> float:
        return float(self.records[-1]["best_avg_dice_score"]) if self.records else -math.inf

    def __call__(self, engine: Engine) -> None:
        value = float(engine.state.metrics[self.metric_name])
        value = value if math.isfinite(value) else 0.0
        if value <= self.best:
            return
        self.records.append(
            {
                "best_avg_dice_score": value,
                "best_epoch": int(engine.state.epoch),
                "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
        )
        write_progress(self.ckpt_path, self.records)
