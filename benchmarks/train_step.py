# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""One MaskSAM training step, with and without activation checkpointing of the encoder blocks.

A step is the bundle's: forward of ``build_masksam(...)`` (bundle defaults, Q=24, K=16, T slices),
``MaskClassificationLoss(SetCriterion(K, HungarianMatcher()))`` on the label volume, backward, AdamW step
over the trainable parameters (lr 1e-3, weight decay 3e-5, eps 1e-4). Input: ``batch`` synthetic
CT-like ``(S, S, T)`` crops with K-1 "organs".

- time: the two variants (``gradient_checkpointing`` False/True on one model) interleaved in one
  process, median per step;
- saved activations: bytes of the tensors autograd keeps for backward after forward + loss, parameters
  excluded (exact and deterministic; what checkpointing reduces);
- peak memory: the first step of each variant in a fresh child process (RSS high-water delta on CPU,
  ``max_memory_allocated`` on CUDA; see ``benchmarks/common.py``), the model, optimiser, data and
  imports excluded, AdamW's state (created in that step) included.

The default crop, 128x128x9 with ViT-B and batch 1, fits a ~3-minute CPU budget; the bundle trains
512x512x9 crops, batch 2 (``--size 512 --batch 2``), whose step without checkpointing needs tens of GB:
there ``--peak-variants checkpointing`` measures the checkpointed step only, and the ratio is bounded
from above by its peak over the activations saved without checkpointing (counted without holding them).

    python benchmarks/train_step.py                                   # vit_b, 128x128x9, batch 1
    python benchmarks/train_step.py --size 256 --repeats 1
    python benchmarks/train_step.py --size 512 --batch 2 --no-time --peak-variants checkpointing
    python benchmarks/train_step.py --device cuda --dtype bf16 --size 512 --batch 2 --repeats 5
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from typing import Any

import torch
from common import (
    begin_benchmark,
    ct_like_volume,
    peak_memory_mib,
    print_result,
    run_child,
    synchronize,
)
from common import saved_activations_mib as count_saved_activations_mib

from masksam.losses import HungarianMatcher, MaskClassificationLoss, SetCriterion
from masksam.networks import build_masksam

VARIANTS = {"no_checkpointing": False, "checkpointing": True}


def build(spec: dict[str, Any], device: torch.device, dtype: torch.dtype):
    torch.manual_seed(0)
    kw: dict[str, Any] = {"num_slices": spec["slices"], "num_queries": spec["queries"], "num_classes": spec["classes"]}
    if spec["backbone"] != "lite_medsam":
        kw["generator_widths"] = [192, 96, 96, 48, 48]
    net = build_masksam(spec["backbone"], image_size=spec["size"], **kw).to(device).train()
    loss_fn = MaskClassificationLoss(SetCriterion(spec["classes"], HungarianMatcher())).to(device)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=3e-5, eps=1e-4)
    crops = [
        ct_like_volume((spec["size"], spec["size"], spec["slices"]), spec["classes"], seed=i)
        for i in range(spec["batch"])
    ]
    image = torch.cat([c[0] for c in crops]).to(device)
    label = torch.cat([c[1] for c in crops]).to(device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def forward_loss() -> torch.Tensor:
        ctx = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
        with ctx:
            out = net(image)
        return loss_fn(out, label)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = forward_loss()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return float(loss.detach())

    # Tensors that exist before a step (the model's, the loss's, the data): not activations of the step.
    existing = [*net.parameters(), *net.buffers(), *loss_fn.parameters(), *loss_fn.buffers(), image, label]
    return net, step, forward_loss, existing


def saved_activations_mib(spec: dict[str, Any], device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    """MiB of activations autograd keeps for the backward pass after forward + loss, per variant.

    Counted without holding them (:func:`common.saved_activations_mib`): a lower bound of the step's peak
    memory (model, optimiser and data excluded).
    """
    net, _, forward_loss, existing = build(spec, device, dtype)
    out: dict[str, float] = {}
    for variant, flag in VARIANTS.items():
        net.set_gradient_checkpointing(flag)
        out[variant] = count_saved_activations_mib(forward_loss, existing)
    return out


def measure_child(spec: dict[str, Any]) -> dict[str, Any]:
    device, dtype = torch.device(spec["device"]), getattr(torch, spec["dtype"])
    net, step, _, _ = build(spec, device, dtype)
    net.set_gradient_checkpointing(VARIANTS[spec["variant"]])
    start = time.perf_counter()
    mem = peak_memory_mib(step, device)
    mem["first_step_s"] = time.perf_counter() - start
    return mem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="vit_b")
    parser.add_argument("--size", type=int, default=128, help="in-plane crop S")
    parser.add_argument("--slices", type=int, default=9)
    parser.add_argument("--queries", type=int, default=24)
    parser.add_argument("--classes", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1, help="crops per step (bundle: batch_size 1 x num_samples 2)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--no-time", action="store_true", help="only the peak-memory children")
    parser.add_argument(
        "--peak-variants",
        nargs="+",
        choices=list(VARIANTS),
        default=list(VARIANTS),
        help="variants whose peak memory is measured (a step without checkpointing may not fit in memory)",
    )
    started = begin_benchmark(parser, measure_child)
    if started is None:
        return
    args, device, dtype, info = started
    spec = {k: getattr(args, k) for k in ("backbone", "size", "slices", "queries", "classes", "batch")}
    spec.update(device=str(device), dtype=str(dtype).removeprefix("torch."))
    print(f"# training step: {spec}")
    result: dict[str, Any] = {"config": spec, "machine": info}
    if not args.no_time:
        net, step, _, _ = build(spec, device, dtype)
        runs: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for i in range(args.warmup + args.repeats):
            for variant, flag in VARIANTS.items():
                net.set_gradient_checkpointing(flag)
                synchronize(device)
                start = time.perf_counter()
                step()
                synchronize(device)
                if i >= args.warmup:
                    runs[variant].append(time.perf_counter() - start)
        del net, step
        med = {v: statistics.median(r) for v, r in runs.items()}
        result["step_s"] = {v: round(t, 3) for v, t in med.items()}
        result["runs_s"] = {v: [round(t, 3) for t in r] for v, r in runs.items()}
        result["time_ratio"] = round(med["checkpointing"] / med["no_checkpointing"], 2)
        print(
            f"step time: without checkpointing {med['no_checkpointing']:.2f}s, with {med['checkpointing']:.2f}s "
            f"(ratio {result['time_ratio']})",
            flush=True,
        )
    if not args.no_memory:
        saved = saved_activations_mib(spec, device, dtype)
        result["saved_activations_mib"] = saved
        result["saved_activations_ratio"] = round(saved["checkpointing"] / saved["no_checkpointing"], 3)
        print(
            f"activations saved for backward: without checkpointing {saved['no_checkpointing']:.0f} MiB, "
            f"with {saved['checkpointing']:.0f} MiB (ratio {result['saved_activations_ratio']})",
            flush=True,
        )
        extra = [f"--threads={torch.get_num_threads()}"]
        mem = {v: run_child(__file__, {**spec, "variant": v}, extra) for v in args.peak_variants}
        result["peak_mib"] = {v: round(m["peak_mib"], 1) for v, m in mem.items()}
        result["memory_method"] = next(iter(mem.values()))["method"]
        text = ", ".join(f"{v.replace('_', ' ')} {m:.0f} MiB" for v, m in result["peak_mib"].items())
        if len(mem) == 2:
            result["peak_memory_ratio"] = round(
                mem["checkpointing"]["peak_mib"] / mem["no_checkpointing"]["peak_mib"], 2
            )
            text += f" (ratio {result['peak_memory_ratio']})"
        print(f"peak memory of a step: {text}", flush=True)
        if "checkpointing" in mem:
            # The peak without checkpointing is at least its saved activations, so this bounds the ratio
            # (up to how the measured peak is taken: on CPU an RSS delta, within about 100 MiB).
            bound = mem["checkpointing"]["peak_mib"] / saved["no_checkpointing"]
            result["peak_memory_ratio_at_most"] = round(bound, 2)
            print(
                f"peak with checkpointing / activations saved without = {bound:.2f}: an upper bound of the "
                "peak-memory ratio (the peak without checkpointing is at least the activations it saves; "
                "the measured peak is an RSS delta on CPU, within about 100 MiB)",
                flush=True,
            )
    print_result("train_step", result)


if __name__ == "__main__":
    main()
