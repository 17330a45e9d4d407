# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""MA-SAM's costs: forward against our plain encoder, slice-window inference per slice, training memory.

Random weights (timing and memory do not depend on their values), the bundle's sizes by default
(``build_ma_sam(backbone, image_size=S, num_slices=T, num_classes=K, fact_rank=32, adapter_dim=384)``,
ViT-B, 512x512x5, K=13). Every comparison is measured in one run, its variants interleaved round by
round (A, B, A, B, ...; the machine's drift hits both alike), and medians are printed.

- ``forward``: one ``(1, 1, S, S, T)`` stack through MA-SAM (eval, ``torch.no_grad``) against our own
  plain encoder (``build_encoder3d(build_sam(...).image_encoder)``, no adapters, neck included) on the
  same T slices ``(T, 3, S, S)``: the time ratio (issue target: at most 1.5x). MA-SAM's time is split by
  part (forward hooks: input projection; encoder stem + neck; the encoder blocks' frozen parts, their 3D
  adapters and their FacT updates; the decoder's two-way transformer; up-scaling + hypernetwork product;
  the rest), each beside its FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode`` on the same
  call (2 per multiply-add; matrix products, convolutions and attention only: see
  :func:`common.module_flops`), so the FLOP ratio (the time ratio's floor at equal efficiency) prints
  beside it. The FacT row is the computation of its ``[dq | 0 | dv]`` delta; adding that delta to the
  frozen qkv output happens in the block's attention and counts under the frozen parts.
- ``window``: ``SliceWindowInferer(roi_size=(S, S, T), slice_stride=1)`` (the paper: each slice averaged
  over T windows) against ``slice_stride=T`` on a ``(1, 1, S, S, D)`` volume (D=20), ``torch.no_grad``:
  seconds per volume slice and their ratio.
- ``memory``: peak memory of one training step (the bundle's: forward, ``DiceCELoss`` 0.2 CE + 0.8 Dice,
  backward, AdamW over the trainable parameters) with ``gradient_checkpointing`` True against False, each
  step in a fresh child process, as ``benchmarks/train_step.py`` measures it (RSS high-water delta on CPU,
  ``max_memory_allocated`` on CUDA; model, optimiser, data and imports excluded, AdamW's state created in
  the step included), with the activations autograd saves for backward beside it (issue target: at
  most 0.5x). ``--memory-rounds`` children per variant, interleaved; medians.

Full size takes about 25 minutes on 2 idle CPU cores: a forward ~13 s; 25 windows of ~14 s per round of
the slice-window part (20 at stride 1, 5 at stride T: the volume is padded by T - 1 edge slices); a
training step ~45 s and ~6 GB without checkpointing.

    python benchmarks/ma_sam.py                                       # vit_b, 512x512x5, K=13
    python benchmarks/ma_sam.py --parts forward --rounds 5
    python benchmarks/ma_sam.py --backbone tiny --size 64 --volume-slices 8    # seconds (the smoke test)
    python benchmarks/ma_sam.py --device cuda --dtype bf16 --backbone vit_h
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from common import (
    ModuleTimer,
    begin_benchmark,
    ct_like_volume,
    interleaved_parts,
    module_flops,
    peak_memory_mib,
    print_result,
    run_child,
    saved_activations_mib,
    synchronize,
)
from monai.losses import DiceCELoss
from torch import nn

from masksam.adapters import FacTQKV, SliceConvAdapter3D
from masksam.backbones import AdaptedBlock, build_encoder3d, build_sam
from masksam.inferers import SliceWindowInferer
from masksam.networks import build_ma_sam

PARTS = ("forward", "window", "memory")
VARIANTS = {"no_checkpointing": False, "checkpointing": True}
#: Rows of the forward's breakdown: (label, how the row is derived from the hooked groups).
ROWS = (
    ("input projection", "input_projection"),
    ("encoder stem + neck (frozen)", "encoder - blocks"),
    ("encoder blocks, frozen parts", "blocks - adapters_3d - fact"),
    ("encoder blocks, 3D adapters", "adapters_3d"),
    ("encoder blocks, FacT", "fact"),
    ("decoder two-way transformer", "decoder_transformer"),
    ("up-scaling + hypernetwork product", "decoder - decoder_transformer"),
    ("other (reshapes, no-mask embedding, dense PE)", "total - input_projection - encoder - decoder"),
)


def network(spec: dict[str, Any], gradient_checkpointing: bool = False) -> nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return build_ma_sam(
            spec["backbone"],
            image_size=spec["size"],
            num_classes=spec["classes"],
            num_slices=spec["slices"],
            fact_rank=spec["rank"],
            adapter_dim=spec["adapter_dim"],
            gradient_checkpointing=gradient_checkpointing,
        )


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()


def groups(net: nn.Module) -> dict[str, list[nn.Module]]:
    """The hooked module groups of MA-SAM (see ``ROWS``)."""
    return {
        "input_projection": [net.input_projection],
        "encoder": [net.encoder],
        "blocks": [m for m in net.encoder.modules() if isinstance(m, AdaptedBlock)],
        "adapters_3d": [m for m in net.modules() if isinstance(m, SliceConvAdapter3D)],
        "fact": [m for m in net.modules() if isinstance(m, FacTQKV)],
        "decoder": [net.decoder],
        "decoder_transformer": [net.decoder.transformer],
    }


def derive(expression: str, values: dict[str, float]) -> float:
    """``"a - b - c"`` over ``values``."""
    first, *rest = expression.split(" - ")
    return values[first] - sum(values[name] for name in rest)


def group_flops(net: nn.Module, flops: dict[str, int], total: int) -> dict[str, int]:
    """FLOPs per group of :func:`groups` (module paths looked up in ``flops`` of :func:`common.module_flops`)."""
    paths = {id(m): path for path, m in net.named_modules()}
    out = {name: sum(flops.get(paths[id(m)], 0) for m in modules) for name, modules in groups(net).items()}
    out["total"] = total
    return out


def measure_forward(
    net: nn.Module, spec: dict[str, Any], args: argparse.Namespace, device: torch.device, dtype: torch.dtype
) -> dict[str, Any]:
    size, t = spec["size"], spec["slices"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        plain = build_encoder3d(build_sam(spec["backbone"], image_size=size).image_encoder).to(device).eval()
    x = torch.rand(1, 1, size, size, t, device=device)
    slices = torch.rand(t, 3, size, size, device=device)
    calls: dict[str, Callable[[], Any]] = {"ma_sam": lambda: net(x), "plain_encoder": lambda: plain(slices, t)}
    with torch.no_grad(), autocast(device, dtype):
        flops = module_flops(calls["ma_sam"])
        plain_flops = module_flops(calls["plain_encoder"])[""]
        timer = ModuleTimer(groups(net), device)
        wall, parts = interleaved_parts(calls, timer, "ma_sam", device, args.rounds, args.warmup)
        timer.remove()
    med = {name: statistics.median(r) for name, r in wall.items()}
    part_s = {row: statistics.median(derive(expr, p) for p in parts) for row, expr in ROWS}
    counted = group_flops(net, flops, flops[""])
    part_gflops = {row: derive(expr, counted) / 1e9 for row, expr in ROWS}
    encoder_s = statistics.median(p["encoder"] for p in parts)
    return {
        "time_s": {k: round(v, 4) for k, v in med.items()},
        "runs_s": {k: [round(v, 4) for v in r] for k, r in wall.items()},
        "ratio_vs_plain_encoder": round(med["ma_sam"] / med["plain_encoder"], 3),
        "encoder_ratio_vs_plain_encoder": round(encoder_s / med["plain_encoder"], 3),
        "gflops": {"ma_sam": round(flops[""] / 1e9, 3), "plain_encoder": round(plain_flops / 1e9, 3)},
        "flop_ratio_vs_plain_encoder": round(flops[""] / plain_flops, 3),
        "parts_s": {k: round(v, 4) for k, v in part_s.items()},
        "parts_gflops": {k: round(v, 3) for k, v in part_gflops.items()},
        "flop_counter": "torch.utils.flop_counter.FlopCounterMode (+ CPU SDPA with torch's sdpa formula)",
    }


def print_forward(row: dict[str, Any], spec: dict[str, Any], args: argparse.Namespace) -> None:
    ms, ps = row["time_s"]["ma_sam"], row["time_s"]["plain_encoder"]
    mg, pg = row["gflops"]["ma_sam"], row["gflops"]["plain_encoder"]
    print(
        f"forward {spec['backbone']} {spec['slices']}x{spec['size']}x{spec['size']} (eval, no_grad; median of "
        f"{args.rounds} interleaved rounds after {args.warmup} warm-up): MA-SAM {ms:.3f}s vs our plain encoder "
        f"(build_encoder3d without adapters, neck included, same {spec['slices']} slices) {ps:.3f}s: "
        f"ratio {row['ratio_vs_plain_encoder']:.3f} (target <= 1.5); MA-SAM's encoder alone "
        f"ratio {row['encoder_ratio_vs_plain_encoder']:.3f}; counted GFLOPs {mg:.2f} vs {pg:.2f}: "
        f"flop ratio {row['flop_ratio_vs_plain_encoder']:.3f}",
        flush=True,
    )
    width = max(len(label) for label, _ in ROWS)
    print(f"  {'MA-SAM part':<{width}}  {'time s':>9}  {'share':>6}  {'GFLOPs':>9}  {'GFLOP/s':>8}")
    for label, _ in ROWS:
        seconds, gflops = row["parts_s"][label], row["parts_gflops"][label]
        rate = f"{gflops / seconds:8.1f}" if seconds > 0 and gflops > 0 else f"{'-':>8}"
        print(f"  {label:<{width}}  {seconds:9.4f}  {100 * seconds / ms:5.1f}%  {gflops:9.3f}  {rate}")
    print(f"  {'total':<{width}}  {ms:9.4f}  {100.0:5.1f}%  {mg:9.3f}  {mg / ms:8.1f}")
    print(f"  {'our plain encoder (baseline)':<{width}}  {ps:9.4f}  {100 * ps / ms:5.1f}%  {pg:9.3f}  {pg / ps:8.1f}")


def measure_window(
    net: nn.Module, spec: dict[str, Any], args: argparse.Namespace, device: torch.device, dtype: torch.dtype
) -> dict[str, Any]:
    size, t, depth = spec["size"], spec["slices"], args.volume_slices
    image, _ = ct_like_volume((size, size, depth), spec["classes"])
    windows: list[int] = []

    def counted(window: torch.Tensor) -> torch.Tensor:
        windows.append(window.shape[0])
        return net(window)

    strides = {"stride_1": 1, f"stride_{t}": t}
    inferers = {
        name: SliceWindowInferer(roi_size=(size, size, t), slice_stride=s, sw_device=device, device=torch.device("cpu"))
        for name, s in strides.items()
    }
    counts: dict[str, int] = {}
    wall: dict[str, list[float]] = {name: [] for name in inferers}
    with torch.no_grad(), autocast(device, dtype):
        if "forward" not in args.parts:
            for _ in range(args.warmup):
                net(torch.rand(1, 1, size, size, t, device=device))
        for _ in range(args.rounds):
            for name, inferer in inferers.items():
                windows.clear()
                synchronize(device)
                start = time.perf_counter()
                out = inferer(image, counted)
                synchronize(device)
                wall[name].append(time.perf_counter() - start)
                counts[name] = sum(windows)
                if tuple(out.shape) != (1, spec["classes"], size, size, depth):
                    raise RuntimeError(f"unexpected slice-window output {tuple(out.shape)}")
    med = {name: statistics.median(r) for name, r in wall.items()}
    per_slice = {name: v / depth for name, v in med.items()}
    return {
        "volume": [1, 1, size, size, depth],
        "windows": counts,
        "time_s": {k: round(v, 3) for k, v in med.items()},
        "runs_s": {k: [round(v, 3) for v in r] for k, r in wall.items()},
        "per_volume_slice_s": {k: round(v, 4) for k, v in per_slice.items()},
        "per_window_s": {k: round(med[k] / counts[k], 4) for k in med},
        "ratio_stride_1_vs_stride_t": round(med["stride_1"] / med[f"stride_{t}"], 3),
    }


def print_window(row: dict[str, Any], spec: dict[str, Any], args: argparse.Namespace) -> None:
    t = spec["slices"]
    per, win = row["per_volume_slice_s"], row["windows"]
    print(
        f"slice window {'x'.join(map(str, row['volume'][2:]))} volume, roi {spec['size']}x{spec['size']}x{t} "
        f"(no_grad; median of {args.rounds} interleaved rounds): stride 1 {per['stride_1']:.4f}s per volume slice "
        f"({win['stride_1']} windows, {row['per_window_s']['stride_1']:.3f}s each) vs stride {t} "
        f"{per[f'stride_{t}']:.4f}s per volume slice ({win[f'stride_{t}']} windows, "
        f"{row['per_window_s'][f'stride_{t}']:.3f}s each): ratio {row['ratio_stride_1_vs_stride_t']:.3f}",
        flush=True,
    )


def measure_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Child process: the peak memory of one training step, then the activations that step saves."""
    device, dtype = torch.device(spec["device"]), getattr(torch, spec["dtype"])
    net = network(spec, VARIANTS[spec["variant"]]).to(device).train()
    loss_fn = DiceCELoss(
        to_onehot_y=True, softmax=True, include_background=True, batch=True, lambda_ce=0.2, lambda_dice=0.8
    )
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=8e-4, betas=(0.9, 0.999), weight_decay=0.1)
    shape = (spec["size"], spec["size"], spec["slices"])
    crops = [ct_like_volume(shape, spec["classes"], seed=i) for i in range(spec["batch"])]
    image = torch.cat([c[0] for c in crops]).to(device)
    label = torch.cat([c[1] for c in crops]).to(device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def forward_loss() -> torch.Tensor:
        with autocast(device, dtype):
            out = net(image)
        return loss_fn(out.float(), label)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        scaler.scale(forward_loss()).backward()
        scaler.step(opt)
        scaler.update()

    start = time.perf_counter()
    mem = peak_memory_mib(step, device)
    mem["first_step_s"] = time.perf_counter() - start
    existing = [*net.parameters(), *net.buffers(), image, label]
    mem["saved_activations_mib"] = saved_activations_mib(forward_loss, existing)
    return mem


def measure_memory(spec: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    extra = [f"--threads={torch.get_num_threads()}"]
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    for _ in range(args.memory_rounds):
        for variant in VARIANTS:
            runs[variant].append(run_child(__file__, {**spec, "variant": variant, "batch": args.batch}, extra))
    peak = {v: statistics.median(r["peak_mib"] for r in rs) for v, rs in runs.items()}
    saved = {v: rs[0]["saved_activations_mib"] for v, rs in runs.items()}
    step_s = {v: statistics.median(r["first_step_s"] for r in rs) for v, rs in runs.items()}
    return {
        "batch": args.batch,
        "peak_mib": {v: round(m, 1) for v, m in peak.items()},
        "runs_peak_mib": {v: [round(r["peak_mib"], 1) for r in rs] for v, rs in runs.items()},
        "peak_memory_ratio": round(peak["checkpointing"] / peak["no_checkpointing"], 3),
        "saved_activations_mib": saved,
        "saved_activations_ratio": round(saved["checkpointing"] / saved["no_checkpointing"], 3),
        "first_step_s": {v: round(s, 2) for v, s in step_s.items()},
        "memory_method": runs["checkpointing"][0]["method"],
    }


def print_memory(row: dict[str, Any], spec: dict[str, Any], args: argparse.Namespace) -> None:
    peak, saved, step = row["peak_mib"], row["saved_activations_mib"], row["first_step_s"]
    print(
        f"training step {spec['backbone']} {spec['size']}x{spec['size']}x{spec['slices']} batch {row['batch']} "
        f"(DiceCE + AdamW; {row['memory_method']}, median of {args.memory_rounds} fresh child process(es) per "
        f"variant): peak memory with gradient_checkpointing {peak['checkpointing']:.1f} MiB vs without "
        f"{peak['no_checkpointing']:.1f} MiB: ratio {row['peak_memory_ratio']:.3f} (target <= 0.5); activations "
        f"saved for backward {saved['checkpointing']:.1f} vs {saved['no_checkpointing']:.1f} MiB: ratio "
        f"{row['saved_activations_ratio']:.3f}; first step {step['checkpointing']:.2f}s vs "
        f"{step['no_checkpointing']:.2f}s",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="vit_b", help="vit_b, vit_h, tiny, ... (build_ma_sam's)")
    parser.add_argument("--size", type=int, default=512, help="in-plane size S (bundle: 512)")
    parser.add_argument("--slices", type=int, default=5, help="T, slices per stack (bundle: 5)")
    parser.add_argument("--classes", type=int, default=13, help="K, background included (bundle: 13)")
    parser.add_argument("--rank", type=int, default=32, help="FacT rank r")
    parser.add_argument("--adapter-dim", type=int, default=384, help="width of the 3D adapters")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the timed variants")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before them")
    parser.add_argument("--volume-slices", type=int, default=20, help="D of the slice-window volume")
    parser.add_argument("--memory-rounds", type=int, default=1, help="child processes per checkpointing variant")
    parser.add_argument("--batch", type=int, default=1, help="stacks per training step")
    started = begin_benchmark(parser, measure_child)
    if started is None:
        return
    args, device, dtype, info = started
    spec = {
        "backbone": args.backbone, "size": args.size, "slices": args.slices, "classes": args.classes,
        "rank": args.rank, "adapter_dim": args.adapter_dim, "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
    }  # fmt: skip
    print(f"# MA-SAM: {spec}", flush=True)
    result: dict[str, Any] = {"config": spec, "machine": info}
    if "forward" in args.parts or "window" in args.parts:
        net = network(spec).to(device).eval()
        if "forward" in args.parts:
            result["forward"] = measure_forward(net, spec, args, device, dtype)
            print_forward(result["forward"], spec, args)
        if "window" in args.parts:
            result["window"] = measure_window(net, spec, args, device, dtype)
            print_window(result["window"], spec, args)
        del net
    if "memory" in args.parts:
        result["memory"] = measure_memory(spec, args)
        print_memory(result["memory"], spec, args)
    print_result("ma_sam", result)


if __name__ == "__main__":
    main()
