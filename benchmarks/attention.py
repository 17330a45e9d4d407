# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""SAM image encoder: our SDPA attention vs segment_anything's original, side by side.

``ours`` is :class:`masksam.backbones.SamViTEncoder3D` without adapters (attention through
:func:`masksam.backbones.sam_attention`); ``segment_anything`` is the same ``ImageEncoderViT`` object
called directly (explicit ``softmax(q k^T + rel)``). Both share one set of weights (random, with random
relative-position tables so that the bias matters) and one input. Per image size it prints the median
forward time of each (interleaved runs, inference mode), the speed-up, the peak extra memory of one
forward of each measured in a fresh child process (see ``benchmarks/common.py``), the max abs
difference of the outputs, and which aten attention kernels run (profiler) for inference and for a
training step.

    python benchmarks/attention.py                          # ViT-B at 512 and 1024 (~3 min, 2 CPU cores)
    python benchmarks/attention.py --sizes 512 --repeats 5
    python benchmarks/attention.py --sizes 1024 --no-memory --max-bias-elements 1   # the augmented form only
    python benchmarks/attention.py --device cuda --dtype bf16 --sizes 1024 2048 --repeats 10
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from common import (
    begin_benchmark,
    interleaved_medians,
    peak_memory_mib,
    print_result,
    run_child,
)
from torch.profiler import ProfilerActivity, profile

from masksam.backbones import MAX_BIAS_ELEMENTS, SamViTEncoder3D, build_sam, sam_attention

VARIANTS = ("segment_anything", "ours")


def build(backbone: str, size: int, device: torch.device, dtype: torch.dtype, batch: int, max_bias: int):
    torch.manual_seed(0)
    encoder = build_sam(backbone, image_size=size).image_encoder
    with torch.no_grad():
        for blk in encoder.blocks:
            blk.attn.rel_pos_h.normal_(0, 0.1)
            blk.attn.rel_pos_w.normal_(0, 0.1)
    encoder = encoder.to(device=device, dtype=dtype).eval()
    ours = SamViTEncoder3D(encoder, max_bias_elements=max_bias).eval()
    x = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
    calls = {"segment_anything": lambda: encoder(x), "ours": lambda: ours(x, batch)[-1]}
    return encoder, calls


def measure_child(spec: dict[str, Any]) -> dict[str, Any]:
    device, dtype = torch.device(spec["device"]), getattr(torch, spec["dtype"])
    _, calls = build(spec["backbone"], spec["size"], device, dtype, spec["batch"], spec["max_bias_elements"])
    with torch.inference_mode():
        return peak_memory_mib(calls[spec["variant"]], device)


def attention_kernels(encoder: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> dict[str, list[str]]:
    """aten attention ops of ``sam_attention`` on a global block: inference, and forward+backward with grad."""
    blk = next(b for b in encoder.blocks if b.window_size == 0)
    grid = blk.attn.rel_pos_h.shape[0] // 2 + 1
    x = torch.randn(1, grid, grid, blk.attn.qkv.in_features, device=device, dtype=dtype)

    def ops(fn) -> list[str]:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        return sorted({e.key for e in prof.key_averages() if "attention" in e.key or "efficient" in e.key})

    with torch.inference_mode():
        inference = ops(lambda: sam_attention(blk.attn, x))
    xg = x.clone().requires_grad_(True)
    training = ops(lambda: sam_attention(blk.attn, xg).float().sum().backward())
    return {"inference": inference, "training": training}


def attention_only(
    encoder: torch.nn.Module,
    batch: int,
    device: torch.device,
    dtype: torch.dtype,
    repeats: int,
    warmup: int,
    max_bias: int,
) -> dict[str, dict[str, Any]]:
    """The attention op alone (qkv to proj) of one global and one windowed block, on its real token shapes."""
    grid = encoder.pos_embed.shape[1]
    out = {}
    for kind, blk in (
        ("global", next(b for b in encoder.blocks if b.window_size == 0)),
        ("windowed", next(b for b in encoder.blocks if b.window_size > 0)),
    ):
        side = grid if blk.window_size == 0 else blk.window_size
        n = batch if blk.window_size == 0 else batch * (-(-grid // blk.window_size)) ** 2
        x = torch.randn(n, side, side, blk.attn.qkv.in_features, device=device, dtype=dtype)
        calls = {
            "segment_anything": lambda a=blk.attn, x=x: a(x),
            "ours": lambda a=blk.attn, x=x: sam_attention(a, x, max_bias_elements=max_bias),
        }
        with torch.inference_mode():
            t = interleaved_medians(calls, device, repeats, warmup)
        out[kind] = {
            "shape": [n, side, side],
            "time_s": {k: round(v["median_s"], 4) for k, v in t.items()},
            "speedup": round(t["segment_anything"]["median_s"] / t["ours"]["median_s"], 2),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="vit_b")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 3; 2 from 1024 up)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds (default 1; 0 from 1024 up)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    parser.add_argument(
        "--max-bias-elements",
        type=int,
        default=MAX_BIAS_ELEMENTS,
        help="largest additive relative-position bias; above it the augmented form runs (default %(default)s)",
    )
    started = begin_benchmark(parser, measure_child)
    if started is None:
        return
    args, device, dtype, info = started
    print(f"# {args.backbone} image encoder, batch {args.batch}, {device} {str(dtype).removeprefix('torch.')}")
    rows = []
    kernels = None
    for size in args.sizes:
        large = size >= 1024
        repeats = args.repeats if args.repeats is not None else (2 if large else 3)
        warmup = args.warmup if args.warmup is not None else (0 if large else 1)
        encoder, calls = build(args.backbone, size, device, dtype, args.batch, args.max_bias_elements)
        with torch.inference_mode():
            diff = (calls["ours"]().float() - calls["segment_anything"]().float()).abs().max().item()
            times = interleaved_medians(calls, device, repeats, warmup)
        blocks = attention_only(encoder, args.batch, device, dtype, repeats, warmup, args.max_bias_elements)
        if kernels is None:
            kernels = attention_kernels(encoder, device, dtype)
            print(f"# attention kernels of ours: {kernels}")
        del encoder, calls
        row: dict[str, Any] = {
            "size": size,
            "time_s": {k: round(v["median_s"], 3) for k, v in times.items()},
            "runs_s": {k: v["runs_s"] for k, v in times.items()},
            "speedup": round(times["segment_anything"]["median_s"] / times["ours"]["median_s"], 2),
            "max_abs_diff": diff,
            "attention_only": blocks,
        }
        if not args.no_memory:
            spec = {"backbone": args.backbone, "size": size, "batch": args.batch, "device": str(device)}
            spec["max_bias_elements"] = args.max_bias_elements
            spec["dtype"] = str(dtype).removeprefix("torch.")
            mem = {
                v: run_child(__file__, {**spec, "variant": v}, [f"--threads={torch.get_num_threads()}"])
                for v in VARIANTS
            }
            row["peak_mib"] = {v: round(m["peak_mib"], 1) for v, m in mem.items()}
            row["memory_method"] = mem["ours"]["method"]
            row["peak_memory_ratio"] = round(mem["ours"]["peak_mib"] / mem["segment_anything"]["peak_mib"], 2)
        rows.append(row)
        mem_txt = (
            f"peak {row['peak_mib']['segment_anything']:.0f} -> {row['peak_mib']['ours']:.0f} MiB "
            f"(ratio {row['peak_memory_ratio']})"
            if "peak_mib" in row
            else "memory not measured"
        )
        print(
            f"{size:5d}px  segment_anything {row['time_s']['segment_anything']:.3f}s  ours {row['time_s']['ours']:.3f}s  "
            f"speedup {row['speedup']:.2f}x  {mem_txt}  max|diff| {diff:.2e}",
            flush=True,
        )
        for kind, b in blocks.items():
            print(
                f"       attention op only, {kind} block {b['shape']}: segment_anything "
                f"{b['time_s']['segment_anything']:.3f}s  ours {b['time_s']['ours']:.3f}s  speedup {b['speedup']:.2f}x",
                flush=True,
            )
    print_result(
        "attention",
        {
            "backbone": args.backbone,
            "batch": args.batch,
            "device": str(device),
            "dtype": str(dtype).removeprefix("torch."),
            "max_bias_elements": args.max_bias_elements,
            "kernels": kernels,
            "rows": rows,
            "machine": info,
        },
    )


if __name__ == "__main__":
    main()
