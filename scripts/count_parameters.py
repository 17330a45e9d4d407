# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Print total vs trainable parameters of SAM encoders with each adapter family, and of MaskSAM.

Models are built on PyTorch's ``meta`` device (shapes only), so ViT-H costs no memory:
    python scripts/count_parameters.py
"""

from __future__ import annotations

import torch

from masksam.adapters import (
    Adapter,
    count_parameters,
    lora_block_adapters,
    ma_sam_block_adapters,
    mark_trainable,
    masksam_block_adapters,
    med_sa_block_adapters,
)
from masksam.backbones import build_encoder3d, build_sam
from masksam.networks import build_masksam

FAMILIES = {
    "masksam depth-conv (hidden C/4, research code)": lambda: masksam_block_adapters(),
    "masksam depth-conv (hidden 32, bundle default)": lambda: masksam_block_adapters(hidden_dim=32),
    "ma_sam FacT r=32 + 3D adapters (hidden 384)": lambda: ma_sam_block_adapters(),
    "med_sa bottleneck + SD-Trans (hidden C/4)": lambda: med_sa_block_adapters(),
    "lora q/v r=4": lambda: lora_block_adapters(),
}


def main() -> None:
    rows = []
    with torch.device("meta"):
        for backbone in ("vit_b", "vit_h"):
            for name, make in FAMILIES.items():
                sam = build_sam(backbone, image_size=512)
                encoder = build_encoder3d(sam.image_encoder, make())
                total, trainable = mark_trainable(encoder, types=(Adapter,))
                rows.append((f"{backbone} encoder + {name}", total, trainable))
            for label, kw in (
                ("research-code sizes", {"encoder_adapter_dim": None, "decoder_adapter_dim": 64,
                                         "generator_widths": [256, 128, 128, 64, 64], "mask_head_channels": 64}),
                ("bundle defaults", {}),
            ):  # fmt: skip
                model = build_masksam(backbone, image_size=512, num_slices=9, num_queries=24, num_classes=16, **kw)
                rows.append((f"{backbone} MaskSAM 9x512x512 Q=24 K=16, {label}", *count_parameters(model)))
    width = max(len(r[0]) for r in rows)
    print(f"{'model':<{width}}  {'total':>9}  {'trainable':>9}")
    for name, total, trainable in rows:
        print(f"{name:<{width}}  {total / 1e6:8.2f}M  {trainable / 1e6:8.2f}M")


if __name__ == "__main__":
    main()
