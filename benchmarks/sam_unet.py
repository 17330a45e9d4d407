# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""SAM-UNet's per-slice inference against our own encoder on the same slice, part by part, for ResNet-34 and -50.

Random weights (timing does not depend on their values), ``build_sam_unet(backbone, image_size=S, cnn=...)``
(ViT-B at 256x256 by default, the paper's size), eval, ``torch.no_grad``: one ``(1, 1, S, S, 1)`` slice with one
box prompt through the whole network (normalisation, ResNet branch, reshapers, the frozen encoder with the
injections, fusion bridges, prompt embedding, decoder, resize to S) against our own plain encoder
(``build_encoder3d(build_sam(...).image_encoder)``, no injections, neck included) on the same slice
``(1, 3, S, S)``: the time ratio (issue target for ResNet-34: at most 1.5x). SAM-UNet's time is split by part
(forward hooks), each beside its FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode`` on the same call
(2 per multiply-add; matrix products, convolutions and attention only: see :func:`common.module_flops`), so
the FLOP ratio (the time ratio's floor at equal efficiency) prints beside it. Variants are interleaved round
by round (SAM-UNet, encoder, SAM-UNet, ...) and medians printed; total and trainable parameters too.

    python benchmarks/sam_unet.py                                   # vit_b, 256x256, ResNet-34 and -50
    python benchmarks/sam_unet.py --backbone tiny --size 64 --rounds 1 --warmup 0    # seconds (the smoke test)
    python benchmarks/sam_unet.py --device cuda --dtype bf16 --backbone lite_medsam
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import warnings
from collections.abc import Callable
from typing import Any

import torch
from common import ModuleTimer, begin_benchmark, ct_like_volume, interleaved_parts, module_flops, print_result
from ma_sam import derive
from torch import nn

from masksam.adapters import count_parameters
from masksam.backbones import build_encoder3d, build_sam
from masksam.networks import CNN_BRANCHES, SamUNet, build_sam_unet

#: Rows of the breakdown: (label, how the row is derived from the hooked groups).
ROWS = (
    ("ResNet branch", "cnn"),
    ("reshapers (to the token grids)", "reshapers"),
    ("frozen SAM encoder (+ injections)", "encoder"),
    ("fusion bridges", "bridges"),
    ("decoder two-way transformer", "decoder_transformer"),
    ("up-scaling + refinement + hypernetwork product", "decoder - decoder_transformer"),
    ("other (normalisation, prompt embedding, resize)", "total - cnn - reshapers - encoder - bridges - decoder"),
)


def groups(net: SamUNet) -> dict[str, list[nn.Module]]:
    """The hooked module groups of SAM-UNet (see ``ROWS``)."""
    return {
        "cnn": [net.cnn],
        "reshapers": list(net.reshapers),
        "encoder": [net.encoder],
        "bridges": list(net.bridges),
        "decoder": [net.decoder],
        "decoder_transformer": [net.decoder.transformer],
    }


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()


def measure(cnn: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    size = args.size
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        net = build_sam_unet(args.backbone, image_size=size, cnn=cnn).to(device).eval()
        plain = build_encoder3d(build_sam(args.backbone, image_size=size).image_encoder).to(device).eval()
    total, trainable = count_parameters(net)
    image, label = ct_like_volume((size, size, 1), num_classes=4)
    x = image.to(device)
    ii, jj = torch.nonzero(label[0, 0, ..., 0] == 1, as_tuple=True)
    box = [ii.min(), jj.min(), ii.max(), jj.max()] if len(ii) else [0, 0, size - 1, size - 1]
    coords = torch.tensor(box, dtype=torch.float32, device=device).reshape(1, 1, 2, 2)
    labels = torch.tensor([[[2, 3]]], device=device)
    slices = net.sam_slices(x)  # the same normalised slice for our encoder
    calls: dict[str, Callable[[], Any]] = {
        "sam_unet": lambda: net(x, coords, labels),
        "plain_encoder": lambda: plain(slices, 1),
    }
    with torch.no_grad(), autocast(device, dtype):
        flops = module_flops(calls["sam_unet"])
        plain_flops = module_flops(calls["plain_encoder"])[""]
        timer = ModuleTimer(groups(net), device)
        wall, parts = interleaved_parts(calls, timer, "sam_unet", device, args.rounds, args.warmup)
        timer.remove()
    paths = {id(m): path for path, m in net.named_modules()}
    counted = {name: sum(flops.get(paths[id(m)], 0) for m in ms) for name, ms in groups(net).items()}
    counted["total"] = flops[""]
    med = {name: statistics.median(r) for name, r in wall.items()}
    return {
        "parameters": {"total": total, "trainable": trainable},
        "time_s": {k: round(v, 4) for k, v in med.items()},
        "runs_s": {k: [round(v, 4) for v in r] for k, r in wall.items()},
        "ratio_vs_plain_encoder": round(med["sam_unet"] / med["plain_encoder"], 3),
        "gflops": {"sam_unet": round(flops[""] / 1e9, 3), "plain_encoder": round(plain_flops / 1e9, 3)},
        "flop_ratio_vs_plain_encoder": round(flops[""] / plain_flops, 3),
        "parts_s": {row: round(statistics.median(derive(expr, p) for p in parts), 4) for row, expr in ROWS},
        "parts_gflops": {row: round(derive(expr, counted) / 1e9, 3) for row, expr in ROWS},
    }


def print_row(cnn: str, row: dict[str, Any], args: argparse.Namespace) -> None:
    ms, ps = row["time_s"]["sam_unet"], row["time_s"]["plain_encoder"]
    mg, pg = row["gflops"]["sam_unet"], row["gflops"]["plain_encoder"]
    target = " (target <= 1.5)" if cnn == "resnet34" else ""
    params = row["parameters"]
    print(
        f"SAM-UNet {args.backbone} + {cnn}, one {args.size}x{args.size} slice with a box (eval, no_grad; median of "
        f"{args.rounds} interleaved rounds after {args.warmup} warm-up): {ms:.3f}s vs our plain encoder on the same "
        f"slice {ps:.3f}s: ratio {row['ratio_vs_plain_encoder']:.3f}{target}; counted GFLOPs {mg:.2f} vs {pg:.2f}: "
        f"flop ratio {row['flop_ratio_vs_plain_encoder']:.3f}; parameters {params['total'] / 1e6:.2f}M total, "
        f"{params['trainable'] / 1e6:.2f}M trainable",
        flush=True,
    )
    width = max(len(label) for label, _ in ROWS)
    print(f"  {'SAM-UNet part':<{width}}  {'time s':>9}  {'share':>6}  {'GFLOPs':>9}  {'GFLOP/s':>8}")
    for label, _ in ROWS:
        seconds, gflops = row["parts_s"][label], row["parts_gflops"][label]
        rate = f"{gflops / seconds:8.1f}" if seconds > 0 and gflops > 0 else f"{'-':>8}"
        print(f"  {label:<{width}}  {seconds:9.4f}  {100 * seconds / ms:5.1f}%  {gflops:9.3f}  {rate}")
    print(f"  {'total':<{width}}  {ms:9.4f}  {100.0:5.1f}%  {mg:9.3f}  {mg / ms:8.1f}")
    print(f"  {'our plain encoder (baseline)':<{width}}  {ps:9.4f}  {100 * ps / ms:5.1f}%  {pg:9.3f}  {pg / ps:8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="vit_b", help="vit_b, lite_medsam, tiny, ... (build_sam_unet's)")
    parser.add_argument("--size", type=int, default=256, help="in-plane size S (paper: 256)")
    parser.add_argument("--cnns", nargs="+", choices=sorted(CNN_BRANCHES), default=["resnet34", "resnet50"])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the timed variants")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before them")
    started = begin_benchmark(parser)
    if started is None:
        return
    args, device, dtype, info = started
    config = {"backbone": args.backbone, "size": args.size, "dtype": str(dtype).removeprefix("torch.")}
    rows = {}
    for cnn in args.cnns:
        rows[cnn] = measure(cnn, args, device, dtype)
        print_row(cnn, rows[cnn], args)
    print_result("sam_unet", {"config": config, "machine": info, "rows": rows})


if __name__ == "__main__":
    main()
