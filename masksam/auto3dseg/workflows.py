# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Training and validation of one generated algorithm folder: what the templates' ``train.py``/``validate.py`` run."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from masksam.auto3dseg.config import apply_overrides, read_algo_config
from masksam.auto3dseg.progress import ProgressWriter

__all__ = ["run_training", "run_validation"]

logger = logging.getLogger(__name__)

ConfigFiles = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


def _launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def run_training(config_file: ConfigFiles, **override: Any) -> None:
    """Train the fold: run the config's ``initialize`` then ``run`` (the trainer), like ``monai.bundle run``.

    Under torchrun (``WORLD_SIZE > 1``) the process group is initialised (NCCL on GPUs, gloo on CPU) and the
    config's ``multi_gpu`` section (the bundle's ``multi_gpu_train.yaml``) is merged before the overrides. Overrides
    whose key is not a setting of the config (parameters meant for other Auto3DSeg algorithms) are skipped; stock
    names such as ``num_epochs`` map to ours (:data:`masksam.auto3dseg.config.STOCK_ALIASES`). Validation runs at
    least at the last epoch's interval; on rank 0 a :class:`~masksam.auto3dseg.ProgressWriter` records each better
    validation in ``<ckpt_dir>/progress.yaml``, which Auto3DSeg ranks the algorithms by.

    Args:
        config_file: config paths, a list or comma-joined.
        override: ``--key value`` settings.
    """
    distributed = _launched_by_torchrun()
    if distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    try:
        parser = read_algo_config(config_file)
        if distributed:
            parser.update(parser.get("multi_gpu", {}))
        apply_overrides(parser, override)
        max_epochs = int(parser.get_parsed_content("max_epochs"))
        if int(parser.get_parsed_content("val_interval")) > max_epochs:
            logger.info("val_interval exceeds max_epochs=%d: validating at the last epoch", max_epochs)
            parser["val_interval"] = max_epochs
        parser.get_parsed_content("initialize")
        evaluator = parser.get_parsed_content("validate#evaluator")  # on every rank: its handlers make collective calls
        if not parser.get_parsed_content("is_not_rank0"):
            ProgressWriter(parser.get_parsed_content("ckpt_dir")).attach(evaluator)
        parser.get_parsed_content("run")
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()


def run_validation(config_file: ConfigFiles, **override: Any) -> float:
    """Validate the fold's best model (``model.pt``) on its validation cases; returns the mean Dice.

    The config's ``evaluate`` section (the bundle's ``evaluate.yaml``) is merged first: per-class and per-case Dice
    go to ``<output_dir>`` (MONAI ``MetricsSaver``).
    """
    parser = read_algo_config(config_file)
    parser.update(parser.get("evaluate", {}))
    apply_overrides(parser, {"sam_checkpoint": None, **override})  # model.pt holds SAM's weights
    parser.get_parsed_content("initialize")
    evaluator = parser.get_parsed_content("validate#evaluator")
    evaluator.run()
    score = float(evaluator.state.metrics["val_mean_dice"])
    logger.info("fold %s mean Dice: %.4f", parser.get_parsed_content("fold"), score)
    return score
