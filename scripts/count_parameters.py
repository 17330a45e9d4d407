# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Print total vs trainable parameters of SAM encoders with each adapter family, of MaskSAM, MA-SAM, Med-SA and SAM-UNet.

MA-SAM (ViT-B and ViT-H, 512x512x5, r=32, 12 organs + background) is counted per part and reconciled
with the research code's counts (``/work/shared/METHODS.md`` 2e: 117.4 M total / 30.1 M trainable for
ViT-B, 729.9 M / 96.8 M for ViT-H): the differences are computed, not assumed.

SAM-UNet (ViT-B at 256x256 with ResNet-34 and ResNet-50) is counted per part and reconciled likewise with the
research code's counts (METHODS.md 3e: R50 138.4 M total / 51.76 M trainable, R34 116.0 M / 29.3 M).

Med-SA (ViT-B and ViT-H at 1024x1024, the research code's size) is counted with the bundle's defaults (only the
adapters train: the paper's rule) and with the whole mask decoder training (the research code's rule), beside the
research code's counts (METHODS.md 4e: ViT-B 104.4 M / 14.7 M, ViT-H 719.9 M / 82.9 M).

Models are built on PyTorch's ``meta`` device (shapes only), so ViT-H costs no memory:
    python scripts/count_parameters.py
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from segment_anything.modeling import MaskDecoder
from torch import nn

from masksam.adapters import (
    Adapter,
    FacTQKV,
    SliceConvAdapter3D,
    count_parameters,
    lora_block_adapters,
    ma_sam_block_adapters,
    mark_trainable,
    masksam_block_adapters,
    med_sa_block_adapters,
)
from masksam.backbones import SAM_PRESETS, build_encoder3d, build_sam
from masksam.networks import MASAM, SamUNet, build_ma_sam, build_masksam, build_med_sa, build_sam_unet

FAMILIES = {
    "masksam depth-conv (hidden C/4, research code)": lambda: masksam_block_adapters(),
    "masksam depth-conv (hidden 32, bundle default)": lambda: masksam_block_adapters(hidden_dim=32),
    "ma_sam FacT r=32 + 3D adapters (hidden 384)": lambda: ma_sam_block_adapters(),
    "med_sa bottleneck + SD-Trans (hidden C/4)": lambda: med_sa_block_adapters(),
    "lora q/v r=4": lambda: lora_block_adapters(),
}

#: The research code's counts (cchen-cc/MA-SAM at 0c3cd90, 512x512, r=32, 12 organs + background), M parameters.
MA_SAM_RESEARCH_CODE = {"vit_b": (117.4, 30.1), "vit_h": (729.9, 96.8)}
MA_SAM_CLASSES = 13
#: The research code's counts (Hhankyangg/sam-unet at a0b84c5, ViT-B at 256x256), M parameters: total, trainable.
SAM_UNET_RESEARCH_CODE = {"resnet50": (138.4, 51.76), "resnet34": (116.0, 29.3)}
#: The research code's counts (KidsWithTokens/Medical-SAM-Adapter at 4dcdc63, 1024x1024, SD-Trans), M parameters.
MED_SA_RESEARCH_CODE = {"vit_b": (104.4, 14.7), "vit_h": (719.9, 82.9)}


def _count(params: Iterable[nn.Parameter]) -> tuple[int, int]:
    unique = {id(p): p for p in params}.values()
    return sum(p.numel() for p in unique), sum(p.numel() for p in unique if p.requires_grad)


def _params(modules: Iterable[nn.Module]) -> list[nn.Parameter]:
    return [p for m in modules for p in m.parameters()]


def ma_sam_parts(model: MASAM) -> list[tuple[str, tuple[int, int]]]:
    """``(part, (total, trainable))`` rows that add up to the whole MA-SAM network."""
    adapters_3d = _params(m for m in model.modules() if isinstance(m, SliceConvAdapter3D))
    fact = _params(m for m in model.modules() if isinstance(m, FacTQKV))  # shared U, V counted once
    adapted = {id(p) for p in adapters_3d + fact}
    pe, dec = model.prompt_encoder, model.decoder
    return [
        ("input projection (1x1x1 Conv3d, new)", _count(model.input_projection.parameters())),
        ("SAM image encoder (frozen)", _count(p for p in model.encoder.parameters() if id(p) not in adapted)),
        ("3D adapters (2 per block, 384 wide)", _count(adapters_3d)),
        ("FacT (shared U, V + per-block sigma_q, sigma_v)", _count(fact)),
        ("prompt encoder: no-mask embedding", _count(pe.no_mask_embed.parameters())),
        (
            "prompt encoder: the rest (frozen, unused)",
            _count(p for p in pe.parameters() if p is not pe.no_mask_embed.weight),
        ),
        ("decoder: two-way transformer", _count(dec.transformer.parameters())),
        ("decoder: IoU token + K mask tokens", _count(_params([dec.iou_token, dec.mask_tokens]))),
        ("decoder: progressive up-scaling", _count(dec.output_upscaling.parameters())),
        ("decoder: K hypernetwork MLPs", _count(dec.hypernetworks.parameters())),
    ]


def research_iou_head(backbone: str, model: MASAM) -> int:
    """Parameters of the IoU head the research code keeps: SAM's ``MaskDecoder`` with ``K - 1`` multimask
    outputs (K mask tokens), built here and counted (it trains there, though its output is unused)."""
    preset = SAM_PRESETS[backbone]
    decoder = MaskDecoder(
        transformer_dim=preset.prompt_embed_dim,
        transformer=nn.Identity(),
        num_multimask_outputs=model.num_classes - 1,
        iou_head_hidden_dim=preset.iou_head_hidden_dim,
    )
    return sum(p.numel() for p in decoder.iou_prediction_head.parameters())


def ma_sam_report(backbone: str) -> None:
    model = build_ma_sam(backbone, image_size=512, num_classes=MA_SAM_CLASSES, num_slices=5, fact_rank=32)
    parts = ma_sam_parts(model)
    total, trainable = count_parameters(model)
    assert sum(t for _, (t, _) in parts) == total and sum(r for _, (_, r) in parts) == trainable, "parts add up"
    width = max(len(name) for name, _ in parts)
    print(
        f"\n{f'MA-SAM {backbone} 5x512x512, r=32, K={MA_SAM_CLASSES}':<{width + 2}}  {'total':>11}  {'trainable':>11}"
    )
    for name, (t, r) in parts:
        print(f"  {name:<{width}}  {t:>11,}  {r:>11,}")
    print(
        f"  {'MA-SAM (ours)':<{width}}  {total:>11,}  {trainable:>11,}  = {total / 1e6:.2f}M / {trainable / 1e6:.2f}M"
    )
    # What the research code counts differently, each figure computed from the modules themselves.
    iou_head = research_iou_head(backbone, model)
    projection = dict(parts)["input projection (1x1x1 Conv3d, new)"][0]
    prompt_total = sum(p.numel() for p in model.prompt_encoder.parameters())
    prompt_ours = sum(p.numel() for p in model.prompt_encoder.parameters() if p.requires_grad)
    research_total = total + iou_head - projection
    research_trainable = trainable + iou_head - projection + (prompt_total - prompt_ours)
    ref_total, ref_trainable = MA_SAM_RESEARCH_CODE[backbone]
    print(
        f"  research code: {ref_total}M / {ref_trainable}M (METHODS.md 2e). Ours differ by:\n"
        f"    + {iou_head:,} total and trainable: the IoU prediction head (SAM's 3-layer MLP to K={model.num_classes} "
        "scores), which the research code keeps and trains though its output is unused; our decoder has none\n"
        f"    + {prompt_total - prompt_ours:,} trainable only: the research code trains its whole prompt encoder "
        f"({prompt_total:,}), here only the no-mask embedding ({prompt_ours:,}) trains, the rest is frozen\n"
        f"    - {projection:,} total and trainable: our input projection (in_channels -> 3; the research code copies the grey slice)\n"
        f"    = {research_total / 1e6:.2f}M / {research_trainable / 1e6:.2f}M, the research code's "
        f"{ref_total}M / {ref_trainable}M to the 0.1 M it reports: "
        + ("agree" if (round(research_total / 1e6, 1), round(research_trainable / 1e6, 1)) == (ref_total, ref_trainable)
           else "DO NOT AGREE")
    )  # fmt: skip


def sam_unet_parts(model: SamUNet) -> list[tuple[str, tuple[int, int]]]:
    """``(part, (total, trainable))`` rows that add up to the whole SAM-UNet network."""
    dec = model.decoder
    return [
        ("SAM image encoder, neck included (frozen)", _count(model.encoder.parameters())),
        (f"{model.cnn.name} branch (no head)", _count(model.cnn.parameters())),
        ("reshapers (4)", _count(model.reshapers.parameters())),
        ("fusion bridges of levels 0-2", _count(_params(model.bridges[:-1]))),
        ("fusion bridge of the neck", _count(model.bridges[-1].parameters())),
        ("prompt encoder", _count(model.prompt_encoder.parameters())),
        ("decoder: two-way transformer", _count(dec.transformer.parameters())),
        ("decoder: SAM's up-scaling", _count(dec.output_upscaling.parameters())),
        ("decoder: output token + hypernetwork MLP", _count(_params([dec.output_token, dec.hypernetwork]))),
        ("decoder: refinement", _count(dec.refine.parameters())),
    ]


def sam_unet_report(cnn: str) -> None:
    model = build_sam_unet("vit_b", image_size=256, cnn=cnn)
    parts = sam_unet_parts(model)
    total, trainable = count_parameters(model)
    assert sum(t for _, (t, _) in parts) == total and sum(r for _, (_, r) in parts) == trainable, "parts add up"
    width = max(len(name) for name, _ in parts)
    print(f"\n{f'SAM-UNet vit_b 256x256 + {cnn}':<{width + 2}}  {'total':>11}  {'trainable':>11}")
    for name, (t, r) in parts:
        print(f"  {name:<{width}}  {t:>11,}  {r:>11,}")
    print(
        f"  {'SAM-UNet (ours)':<{width}}  {total:>11,}  {trainable:>11,}  = {total / 1e6:.2f}M / {trainable / 1e6:.2f}M"
    )
    ref_total, ref_trainable = SAM_UNET_RESEARCH_CODE[cnn]
    digits = len(str(ref_trainable).split(".")[1])  # compare to the precision the research figure is given at
    agree = (round(total / 1e6, 1), round(trainable / 1e6, digits)) == (ref_total, ref_trainable)
    print(
        f"  research code: {ref_total}M / {ref_trainable}M (METHODS.md 3e): "
        + ("agree, part for part: the same ResNet, reshapers, bridges, decoder pieces (SAM's transformer and "
           "up-scaling, one token, hypernetwork, refinement) and trainable prompt encoder; the zero-initialised "
           "reshaper projections change no count" if agree else "DO NOT AGREE")
    )  # fmt: skip


def med_sa_report(backbone: str) -> None:
    print(f"\nMed-SA {backbone} 1024x1024, adapters C/4, SD-Trans, decoder adapters 64 wide")
    for label, train_decoder in (("adapters train (bundle default, the paper)", False),
                                 ("adapters and SAM's mask decoder train (research code)", True)):  # fmt: skip
        model = build_med_sa(backbone, image_size=1024, num_slices=4, train_decoder=train_decoder)
        total, trainable = count_parameters(model)
        decoder_adapters = sum(p.numel() for p in model.decoder.transformer.layer_adapters.parameters())
        print(f"  {label:<56s} {total / 1e6:8.2f}M total  {trainable / 1e6:7.2f}M trainable "
              f"(decoder adapters {decoder_adapters / 1e6:.2f}M)")  # fmt: skip
    ref_total, ref_trainable = MED_SA_RESEARCH_CODE[backbone]
    print(
        f"  research code: {ref_total}M / {ref_trainable}M (METHODS.md 4e; no decoder adapters, whole decoder trains)"
    )


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
    with torch.device("meta"):
        for backbone in MA_SAM_RESEARCH_CODE:
            ma_sam_report(backbone)
        for backbone in MED_SA_RESEARCH_CODE:
            med_sa_report(backbone)
        for cnn in SAM_UNET_RESEARCH_CODE:
            sam_unet_report(cnn)


if __name__ == "__main__":
    main()
