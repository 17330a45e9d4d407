# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Shared helpers of the benchmark scripts: device/dtype flags, timing, peak memory, machine description.

Peak memory on CPU is the peak resident set size (RSS) of a **fresh child process** that builds the
model and inputs, resets the kernel's high-water mark (``/proc/self/clear_refs``), runs the measured
call once and reads ``VmHWM``: the figure is ``VmHWM - VmRSS before the call``, i.e. the extra physical
memory the call touched at its peak (activations, temporaries, allocator overhead), model weights and
inputs excluded. Allocations the allocator keeps but never touches are not counted; memory freed
inside the call and touched again is counted once. On CUDA the figure is
``torch.cuda.max_memory_allocated`` over the call minus the allocation before it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = [
    "add_device_args",
    "resolve_device",
    "machine",
    "synchronize",
    "timed",
    "interleaved_medians",
    "peak_memory_mib",
    "rss_kib",
    "run_child",
    "child_main",
    "print_result",
    "ct_like_volume",
    "begin_benchmark",
]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def add_device_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i] (falls back to CPU when CUDA is absent)")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="compute dtype (bf16/fp16: GPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)


def resolve_device(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    """The device and dtype to run with; CUDA requested without CUDA falls back to CPU fp32 with a message."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"# --device {args.device} requested but CUDA is not available: running on CPU in fp32", flush=True)
        device, dtype = torch.device("cpu"), torch.float32
    elif device.type == "cpu" and dtype != torch.float32:
        print(f"# {args.dtype} on CPU is not what these benchmarks target: running on CPU in fp32", flush=True)
        dtype = torch.float32
    return device, dtype


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(device: torch.device | None = None) -> dict[str, Any]:
    """Where the figures come from: platform, CPU model and count, torch version and threads, GPU."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds of one call of ``fn`` (synchronised on CUDA)."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def interleaved_medians(
    variants: dict[str, Callable[[], Any]], device: torch.device, repeats: int, warmup: int = 1
) -> dict[str, dict[str, Any]]:
    """Run the variants in turn (A, B, A, B, ...) ``repeats`` times after ``warmup`` rounds; medians and runs."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    runs: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            runs[name].append(timed(fn, device))
    return {name: {"median_s": statistics.median(r), "runs_s": [round(t, 4) for t in r]} for name, r in runs.items()}


def rss_kib(field: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory_mib(fn: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    """Peak extra memory of one call of ``fn`` in this process (see the module docstring)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return {"peak_mib": (torch.cuda.max_memory_allocated(device) - before) / 2**20, "method": "cuda_max_allocated"}
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")  # reset VmHWM to the current RSS
        method = "rss_hwm_delta"
    except OSError:
        method = "rss_hwm_delta_unreset"  # VmHWM may include earlier peaks of this process
    before = rss_kib("VmRSS")
    fn()
    return {"peak_mib": (rss_kib("VmHWM") - before) / 1024, "method": method, "rss_before_mib": before / 1024}


def run_child(
    script: str, spec: dict[str, Any], extra_args: list[str] | None = None, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run ``script --child JSON`` in a fresh interpreter and return the dict it printed as ``CHILD {json}``.

    ``env``: variables set for the child on top of this process's environment (e.g. ``PYTHONPATH``).
    """
    cmd = [sys.executable, script, "--child", json.dumps(spec), *(extra_args or [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env={**os.environ, **(env or {})})
    for line in proc.stdout.splitlines():
        if line.startswith("CHILD "):
            return json.loads(line[len("CHILD ") :])
    raise RuntimeError(f"child {cmd} failed (rc {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def child_main(spec_json: str, measure: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Body of a child process: run ``measure(spec)`` and print its dict as ``CHILD {json}``."""
    print("CHILD " + json.dumps(measure(json.loads(spec_json))), flush=True)


def begin_benchmark(
    parser: argparse.ArgumentParser, measure_child: Callable[[dict[str, Any]], dict[str, Any]] | None = None
) -> tuple[argparse.Namespace, torch.device, torch.dtype, dict[str, Any]] | None:
    """Add the device flags, parse, and either run the child measurement (returns None) or print the machine.

    Returns ``(args, device, dtype, machine)`` in the parent process.
    """
    add_device_args(parser)
    args = parser.parse_args()
    if args.threads:  # parent and child processes alike
        torch.set_num_threads(args.threads)
    if args.child:
        if measure_child is None:
            raise SystemExit("this benchmark has no child measurement")
        child_main(args.child, measure_child)
        return None
    device, dtype = resolve_device(args)
    info = machine(device)
    print(f"# machine: {info}")
    return args, device, dtype, info


def print_result(name: str, result: dict[str, Any]) -> None:
    """The final machine-readable line of a benchmark: ``RESULT {json}``."""
    print("RESULT " + json.dumps({"benchmark": name, **result}, sort_keys=True), flush=True)


def ct_like_volume(
    shape: tuple[int, int, int], num_classes: int = 16, seed: int = 0, window: tuple[float, float] = (-175.0, 250.0)
) -> tuple[torch.Tensor, torch.Tensor]:
    """A synthetic CT-like volume and its label, MONAI layout ``(1, 1, H, W, D)``.

    Air outside an elliptic body (-1000 HU), soft tissue (40 HU) with noise, and ``num_classes - 1``
    ellipsoid "organs" of distinct densities labelled 1..K-1; the image is windowed to ``window`` and
    scaled to [0, 1] as the bundle's ``ScaleIntensityRanged`` does.
    """
    gen = torch.Generator().manual_seed(seed)
    h, w, d = shape
    zz, yy, xx = torch.meshgrid(
        torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), torch.linspace(-1, 1, d), indexing="ij"
    )
    hu = torch.full(shape, -1000.0)
    body = (zz / 0.9) ** 2 + (yy / 0.7) ** 2 <= 1
    hu[body] = 40.0
    label = torch.zeros(shape, dtype=torch.long)
    for k in range(1, num_classes):
        c = (torch.rand(3, generator=gen) - 0.5) * torch.tensor([1.0, 0.8, 1.2])
        r = 0.08 + 0.15 * torch.rand(3, generator=gen)
        organ = ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 <= 1
        organ &= body
        label[organ] = k
        hu[organ] = -100.0 + 300.0 * torch.rand(1, generator=gen).item()
    hu += 20.0 * torch.randn(shape, generator=gen)
    lo, hi = window
    image = ((hu.clamp(lo, hi) - lo) / (hi - lo))[None, None]
    return image, label[None, None]
