# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Reading a generated algorithm's configs the way Auto3DSeg passes them, with command-line overrides."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from monai.bundle import ConfigParser

__all__ = ["STOCK_ALIASES", "split_config_files", "algo_root", "apply_overrides", "read_algo_config"]

logger = logging.getLogger(__name__)

#: Training parameters of MONAI's stock templates (``AutoRunner.set_training_params`` sends the same ones to every
#: algorithm) and the keys of ours they set.
STOCK_ALIASES = {
    "num_epochs": "max_epochs",
    "num_epochs_per_validation": "val_interval",
    "num_images_per_batch": "batch_size",
}


def split_config_files(config_file: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    """Config paths from a list or a comma-joined string (``BundleAlgo`` passes ``--config_file='a.yaml,b.yaml'``).

    Folders are left out (``BundleAlgo.get_inferer`` passes every entry of the ``configs`` folder).
    """
    if isinstance(config_file, (str, os.PathLike)):
        files = [f.strip() for f in os.fspath(config_file).split(",")]
    else:
        files = [os.fspath(f).strip() for f in config_file]
    files = [f for f in files if f and not os.path.isdir(f)]
    if not files:
        raise ValueError("no config file given")
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(f"config files not found: {missing}")
    return files


def algo_root(config_files: Sequence[str]) -> str:
    """The algorithm folder (``work_dir/<name>_<fold>``) holding ``configs/<file>``: the generated bundle's root."""
    return os.path.dirname(os.path.dirname(os.path.abspath(config_files[0])))


def apply_overrides(parser: ConfigParser, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Set every override whose key (or stock alias) exists in the config; skip and log the others.

    Auto3DSeg sends the same parameters to every algorithm, so keys meant for other templates are expected.

    Returns:
        the overrides applied, by config key.
    """
    applied: dict[str, Any] = {}
    for key, value in overrides.items():
        target = STOCK_ALIASES.get(key, key)
        if target in parser:
            parser[target] = value
            applied[target] = value
        else:
            logger.info("ignoring %r: not a setting of this algorithm", key)
    return applied


def read_algo_config(
    config_file: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], overrides: Mapping[str, Any] | None = None
) -> ConfigParser:
    """Read a generated algorithm's configs, set ``bundle_root`` to the folder holding them, apply overrides.

    ``bundle_root`` follows the files, so a moved ``work_dir`` still trains and infers; an explicit ``bundle_root``
    override wins.
    """
    files = split_config_files(config_file)
    parser = ConfigParser()
    parser.read_config(files)
    parser["bundle_root"] = algo_root(files)
    apply_overrides(parser, overrides or {})
    return parser
