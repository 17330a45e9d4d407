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
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "add_device_args",
    "resolve_device",
    "machine",
    "synchronize",
    "timed",
    "interleaved_medians",
    "interleaved_parts",
    "peak_memory_mib",
    "rss_kib",
    "run_child",
    "child_main",
    "print_result",
    "ct_like_volume",
    "begin_benchmark",
    "ModuleTimer",
    "module_flops",
    "saved_activations_mib",
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


def interleaved_parts(
    variants: dict[str, Callable[[], Any]],
    timer: ModuleTimer,
    measured: str,
    device: torch.device,
    rounds: int,
    warmup: int = 1,
) -> tuple[dict[str, list[float]], list[dict[str, float]]]:
    """Run the variants in turn ``rounds`` times after ``warmup`` rounds, timing ``measured``'s parts with ``timer``.

    Returns:
        the seconds of each variant's runs, and for each run of ``measured`` its seconds per group of ``timer``
        with the run's ``"total"``.
    """
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    wall: dict[str, list[float]] = {name: [] for name in variants}
    parts: list[dict[str, float]] = []
    for _ in range(rounds):
        for name, fn in variants.items():
            timer.times = {}
            wall[name].append(timed(fn, device))
            if name == measured:
                parts.append({**timer.times, "total": wall[name][-1]})
    return wall, parts


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


class ModuleTimer:
    """Wall time spent inside groups of sub-modules, through forward hooks (synchronised on CUDA).

    ``groups`` maps a name to the modules whose calls count towards it; ``times`` accumulates seconds per
    group (reset it with ``timer.times = {}``). A group's modules must not call one another (their times
    would be counted twice); modules of different groups may nest (e.g. blocks and the adapters inside them).
    """

    def __init__(self, groups: dict[str, Iterable[nn.Module]], device: torch.device) -> None:
        self.device = device
        self.times: dict[str, float] = {}
        self._start: dict[int, list[float]] = {}
        self._handles = []
        for name, modules in groups.items():
            for module in modules:
                self._handles.append(module.register_forward_pre_hook(self._pre(module)))
                self._handles.append(module.register_forward_hook(self._post(name, module)))

    def _pre(self, module: nn.Module) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            synchronize(self.device)
            self._start.setdefault(id(module), []).append(time.perf_counter())

        return hook

    def _post(self, name: str, module: nn.Module) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            synchronize(self.device)
            elapsed = time.perf_counter() - self._start[id(module)].pop()
            self.times[name] = self.times.get(name, 0.0) + elapsed

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _sdpa_flop(
    query_shape: Sequence[int], key_shape: Sequence[int], value_shape: Sequence[int], *_: Any, **__: Any
) -> int:
    """Torch's formula for its fused attention kernels: the two matrix products ``Q K^T`` and ``P V``."""
    *batch, length_q, dim_qk = query_shape
    length_k, dim_v = key_shape[-2], value_shape[-1]
    return 2 * math.prod(batch) * length_q * length_k * (dim_qk + dim_v)


#: CPU's fused attention kernel is not in torch's FLOP registry (the CUDA ones are): it gets the same formula.
_EXTRA_FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flop}


def module_flops(fn: Callable[[], Any]) -> dict[str, int]:
    """FLOPs (2 per multiply-add) of one call of ``fn``, per module, by ``torch.utils.flop_counter.FlopCounterMode``.

    Counted: matrix products, convolutions (transposed too) and scaled-dot-product attention (its two
    products, on CPU as on CUDA); element-wise work (norms, activations, softmax, additions) is not.
    Keys: ``""`` for the total of the call, and the paths of sub-modules below the outermost module called,
    as its ``named_modules()`` gives them. A module reached by several paths counts under the first one;
    its calls count towards every module running around them.
    """
    with FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS) as counter:
        fn()
    flops = {"": counter.get_total_flops()}
    for name, counts in counter.get_flop_counts().items():
        root, _, path = name.partition(".")
        if path:  # "Global" and the outermost modules' own names are the total
            flops[path] = int(sum(counts.values()))
    return flops


def saved_activations_mib(forward: Callable[[], Any], existing: Sequence[torch.Tensor]) -> float:
    """MiB of tensors autograd keeps for the backward pass of one call of ``forward``, ``existing`` excluded.

    Exact and deterministic, and cheap: the hook records each saved tensor's storage (once; the storages of
    ``existing`` tensors, e.g. parameters, buffers and data that exist before the step, excluded) and keeps
    only a weak reference to it, so nothing is held for a backward pass that never runs, and the count fits
    in memory even where the step would not. All these activations are alive together at the end of a real
    forward pass, so the count is a lower bound of the step's peak memory (model, optimiser and data excluded).
    """
    own = {StorageWeakRef(t.untyped_storage()).cdata for t in existing}
    # A weak reference keeps the storage's record (not its memory) alive, so no later storage takes its key.
    storages: dict[int, tuple[StorageWeakRef, int]] = {}

    def pack(t: torch.Tensor) -> None:
        ref = StorageWeakRef(t.untyped_storage())
        if ref.cdata not in own:
            storages.setdefault(ref.cdata, (ref, t.untyped_storage().nbytes()))

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda _: None):
        out = forward()
    del out
    return round(sum(n for _, n in storages.values()) / 2**20, 1)
