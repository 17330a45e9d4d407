# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Train one fold (Auto3DSeg runs ``python scripts/train.py run --config_file='a.yaml,b.yaml' --key=value``).

nnU-Net's own trainer (``trainer_class``) on ``device``; under ``torchrun --nproc_per_node N`` nnU-Net's DDP on N
GPUs. Writes nnU-Net's fold folder under ``nnunet_results`` and ``progress.yaml`` (nnU-Net's validation mean Dice,
which Auto3DSeg ranks by) to ``ckpt_path``.
"""

from __future__ import annotations

from masksam.auto3dseg.nnunet_workflows import run_nnunet_training as run

__all__ = ["run"]

if __name__ == "__main__":
    import logging

    import fire

    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(levelname)s - %(name)s - %(message)s")
    fire.Fire({"run": run})
