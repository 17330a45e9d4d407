# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Resume an interrupted training run from the newest checkpoint that ``CheckpointSaver`` wrote."""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint

__all__ = ["latest_checkpoint", "ResumeHandler"]

logger = logging.getLogger(__name__)

_NUMBER = re.compile(r"=(\d+)\.pt$")


def latest_checkpoint(ckpt_dir: str | os.PathLike[str], prefix: str = "checkpoint") -> str | None:
    """Newest ``<prefix>_*=<n>.pt`` file in ``ckpt_dir`` by its number (epoch or iteration), or None."""
    files = [f for f in glob.glob(os.path.join(os.fspath(ckpt_dir), f"{prefix}*.pt")) if _NUMBER.search(f)]
    if not files:
        return None
    return max(files, key=lambda f: int(_NUMBER.search(f).group(1)))  # type: ignore[union-attr]


class ResumeHandler:
    """On ``STARTED``, load model/optimizer/scheduler/scaler/trainer state from the newest checkpoint, if any.

    Args:
        ckpt_dir: folder where ``CheckpointSaver`` writes ``checkpoint_epoch=<n>.pt``.
        load_dict: objects to restore, keyed as when saved (the trainer restores epoch and iteration).
        enabled: turn resuming off without editing the handler list.
        prefix: checkpoint file prefix.
    """

    def __init__(
        self, ckpt_dir: str, load_dict: Mapping[str, Any], enabled: bool = True, prefix: str = "checkpoint"
    ) -> None:
        self.ckpt_dir = ckpt_dir
        self.load_dict = dict(load_dict)
        self.enabled = enabled
        self.prefix = prefix

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if not self.enabled:
            return
        path = latest_checkpoint(self.ckpt_dir, self.prefix)
        if path is None:
            logger.info("resume: no checkpoint in %s, starting from scratch", self.ckpt_dir)
            return
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        # Keep the configured max_epochs: a resumed run may be asked to train longer.
        max_epochs = engine.state.max_epochs
        Checkpoint.load_objects(to_load=self.load_dict, checkpoint=checkpoint)
        engine.state.max_epochs = max_epochs
        logger.info("resumed from %s at epoch %d, iteration %d", path, engine.state.epoch, engine.state.iteration)
