# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Validate one fold with its best model: ``python scripts/validate.py run --config_file configs/hyper_parameters.yaml``.

Prints the mean Dice; per-case Dice goes to ``<output_dir>/val_mean_dice_raw.csv``.
"""

from __future__ import annotations

from masksam.auto3dseg.workflows import run_validation as run

__all__ = ["run"]

if __name__ == "__main__":
    import logging

    import fire

    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(levelname)s - %(name)s - %(message)s")
    fire.Fire({"run": run})
