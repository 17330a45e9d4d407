# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Validate one fold again, the nnU-Net way: ``python scripts/validate.py run --config_file configs/hyper_parameters.yaml``.

Prints nnU-Net's mean foreground Dice; per-case and per-class Dice go to ``<fold folder>/validation/summary.json``.
"""

from __future__ import annotations

from masksam.auto3dseg.nnunet_workflows import run_nnunet_validation as run

__all__ = ["run"]

if __name__ == "__main__":
    import logging

    import fire

    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(levelname)s - %(name)s - %(message)s")
    fire.Fire({"run": run})
