# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Train one fold (Auto3DSeg runs ``python scripts/train.py run --config_file='a.yaml,b.yaml' --key=value``).

Also under ``torchrun --nproc_per_node N scripts/train.py run ...``. Writes ``model.pt``, checkpoints and
``progress.yaml`` (best validation mean Dice, which Auto3DSeg ranks by) to ``ckpt_path``.
"""

from __future__ import annotations

from masksam.auto3dseg.workflows import run_training as run

__all__ = ["run"]

if __name__ == "__main__":
    import logging

    import fire

    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(levelname)s - %(name)s - %(message)s")
    fire.Fire({"run": run})
