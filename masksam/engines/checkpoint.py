# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Save the whole training state every epoch, atomically, and resume from the newest one.

MONAI's ``CheckpointSaver`` cannot hold the trainer it is attached to in a bundle config (the reference
would be circular), and nothing resumes "from the newest checkpoint if there is one". This handler
receives the trainer at ``attach`` time and does both with ignite's ``Checkpoint``.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Mapping
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver

from masksam.engines.weights import checked_state_dict

__all__ = ["latest_checkpoint", "TrainingCheckpointHandler"]

logger = logging.getLogger(__name__)

_NUMBER = re.compile(r"_(\d+)\.pt$")


def _numbered(ckpt_dir: str | os.PathLike[str], prefix: str) -> dict[int, str]:
    """``{n: path}`` of the ``<prefix>_<n>.pt`` files in ``ckpt_dir``."""
    files = glob.glob(os.path.join(glob.escape(os.fspath(ckpt_dir)), f"{prefix}_*.pt"))
    found = {}
    for f in files:
        match = _NUMBER.search(os.path.basename(f))
        if match and os.path.basename(f) == f"{prefix}_{match.group(1)}.pt":
            found[int(match.group(1))] = f
    return found


def latest_checkpoint(ckpt_dir: str | os.PathLike[str], prefix: str = "checkpoint") -> str | None:
    """Newest ``<prefix>_<n>.pt`` in ``ckpt_dir`` by its number (the epoch), or None."""
    files = _numbered(ckpt_dir, prefix)
    return files[max(files)] if files else None


class TrainingCheckpointHandler:
    """Write ``<prefix>_<epoch>.pt`` with model, optimizer, scheduler, AMP scaler and trainer state; resume from it.

    Files are written to a temporary name and renamed (ignite ``DiskSaver(atomic=True)``), so a run killed
    mid-write never leaves a truncated checkpoint. On ``STARTED``, if ``resume`` is set and a checkpoint
    exists, every object is restored and training continues after the saved epoch. After each save, only the
    newest ``n_saved`` checkpoints up to the saved epoch are kept, those of earlier (interrupted) runs in the
    folder included; files numbered after the saved epoch (another run's) are left alone.

    Args:
        ckpt_dir: folder of the checkpoints (created if needed).
        objects: objects with ``state_dict``/``load_state_dict`` (model, optimizer, lr_scheduler...). The
            trainer (``"trainer"``) and, when AMP is on, its grad scaler (``"scaler"``) are added at attach.
        resume: load the newest checkpoint when training starts.
        save_interval: save every this many epochs.
        n_saved: how many checkpoints to keep, across runs (the bundles' ``keep_checkpoints``).
        prefix: file prefix.
    """

    def __init__(
        self,
        ckpt_dir: str,
        objects: Mapping[str, Any],
        resume: bool = True,
        save_interval: int = 1,
        n_saved: int = 1,
        prefix: str = "checkpoint",
    ) -> None:
        if save_interval < 1 or n_saved < 1:
            raise ValueError(f"save_interval and n_saved must be >= 1, got {save_interval} and {n_saved}")
        self.ckpt_dir = ckpt_dir
        self.objects = dict(objects)
        self.resume = resume
        self.save_interval = save_interval
        self.n_saved = n_saved
        self.prefix = prefix

    def attach(self, engine: Engine) -> None:
        self.objects["trainer"] = engine
        scaler = getattr(engine, "scaler", None)
        if scaler is not None and getattr(engine, "amp", False):
            self.objects["scaler"] = scaler
        os.makedirs(self.ckpt_dir, exist_ok=True)
        self.checkpoint = Checkpoint(
            to_save=self.objects,
            save_handler=DiskSaver(self.ckpt_dir, require_empty=False, atomic=True),
            filename_prefix="",
            filename_pattern=f"{self.prefix}_{{global_step}}.{{ext}}",
            n_saved=None,  # ignite forgets the files of earlier runs: self.prune keeps the newest n_saved of all
            global_step_transform=lambda eng, _: eng.state.epoch,
        )
        engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self.save)

    def save(self, engine: Engine) -> None:
        """Write this epoch's checkpoint, then :meth:`prune` (on rank 0 only, where ignite's ``DiskSaver`` writes)."""
        self.checkpoint(engine)
        if idist.get_rank() == 0:
            self.prune(engine.state.epoch)

    def prune(self, epoch: int) -> list[str]:
        """Delete all but the newest ``n_saved`` checkpoints numbered up to ``epoch``; return the deleted paths."""
        files = _numbered(self.ckpt_dir, self.prefix)
        older = sorted(n for n in files if n <= epoch)
        removed = [files[n] for n in older[: max(0, len(older) - self.n_saved)]]
        for path in removed:
            os.remove(path)
        if removed:
            logger.info("removed %d older checkpoint(s) (keeping %d): %s", len(removed), self.n_saved, removed)
        return removed

    def load(self, engine: Engine) -> None:
        """Restore the newest checkpoint, if resuming and one exists."""
        if not self.resume:
            return
        path = latest_checkpoint(self.ckpt_dir, self.prefix)
        if path is None:
            logger.info("no checkpoint in %s: training from scratch", self.ckpt_dir)
            return
        state = torch.load(path, map_location="cpu", weights_only=True)
        if "model" in state and "model" in self.objects:  # a network of other settings: say which, and the file
            state["model"] = checked_state_dict(self.objects["model"], state["model"], repr(path))
        max_epochs = engine.state.max_epochs  # a resumed run may be asked to train longer than the saved one
        Checkpoint.load_objects(to_load=self.objects, checkpoint=state)
        engine.state.max_epochs = max_epochs
        logger.info("resumed from %s: epoch %d, iteration %d", path, engine.state.epoch, engine.state.iteration)
