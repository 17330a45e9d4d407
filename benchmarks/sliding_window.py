# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Sliding-window inference of one synthetic 512x512x64 CT-like volume with the bundle's inferer.

``SlidingWindowInferer(roi_size=(S, S, T), sw_batch_size=1, overlap=0.5, mode="gaussian",
sw_device=<device>, device=cpu)`` (``configs/inference.yaml``: windows run on the device, the volume
is stitched on the CPU) over ``SemanticWrapper(build_masksam(...), normalize=True)`` under
``torch.inference_mode``. The run happens in a fresh child process, which reports the wall seconds,
the number of windows, and the peak RSS: the high-water delta over the inference call (volume, model
and imports excluded) and the process's absolute high-water mark (see ``benchmarks/common.py``); on
CUDA also the device's peak allocation.

Default: the ``tiny`` backbone with the test widths (generator 32-16-16-8-8, mask head 8) at the bundle's
ROI 512x512x9, Q=24, K=16, so that the figure is the inferer's own cost plus a cheap network (~2 min on
2 CPU cores). ``--bundle-widths`` uses the bundle's generator/mask-head widths; ``--backbone vit_b`` the
bundle's network (CPU: ~1 min per window, 15 windows).

    python benchmarks/sliding_window.py
    python benchmarks/sliding_window.py --backbone vit_b --bundle-widths
    python benchmarks/sliding_window.py --device cuda --dtype bf16 --backbone vit_b --bundle-widths
"""

from __future__ import annotations

import argparse
import contextlib
import time
import warnings
from typing import Any

import torch
from common import (
    begin_benchmark,
    ct_like_volume,
    peak_memory_mib,
    print_result,
    rss_kib,
    run_child,
    synchronize,
)
from monai.inferers import SlidingWindowInferer

from masksam.inferers import SemanticWrapper
from masksam.networks import build_masksam

TEST_WIDTHS = {"generator_widths": [32, 16, 16, 8, 8], "mask_head_channels": 8}
BUNDLE_WIDTHS = {"generator_widths": [192, 96, 96, 48, 48], "mask_head_channels": 32}


def measure_child(spec: dict[str, Any]) -> dict[str, Any]:
    device, dtype = torch.device(spec["device"]), getattr(torch, spec["dtype"])
    torch.manual_seed(0)
    kw: dict[str, Any] = dict(BUNDLE_WIDTHS if spec["bundle_widths"] else TEST_WIDTHS)
    if spec["backbone"] == "lite_medsam":
        kw.pop("generator_widths")  # stride-4 neck: the builder's default for its 2 up-sampling stages
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        net = build_masksam(
            spec["backbone"],
            image_size=spec["roi"],
            num_slices=spec["slices"],
            num_queries=spec["queries"],
            num_classes=spec["classes"],
            **kw,
        )
    network = SemanticWrapper(net, normalize=True).to(device).eval()
    image, _ = ct_like_volume(tuple(spec["shape"]), spec["classes"])
    roi = (spec["roi"], spec["roi"], spec["slices"])
    inferer = SlidingWindowInferer(
        roi_size=roi,
        sw_batch_size=1,
        overlap=spec["overlap"],
        mode="gaussian",
        sw_device=device,
        device=torch.device("cpu"),
    )
    windows = []

    def counted(x: torch.Tensor) -> torch.Tensor:
        windows.append(1)
        return network(x)

    amp = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    result: dict[str, Any] = {}

    def run() -> None:
        with torch.inference_mode(), amp:
            start = time.perf_counter()
            pred = inferer(image, counted)
            synchronize(device)
            result["seconds"] = time.perf_counter() - start
            result["pred_shape"] = list(pred.shape)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        cuda_before = torch.cuda.memory_allocated(device)
    mem = peak_memory_mib(run, torch.device("cpu"))
    if device.type == "cuda":
        result["cuda_peak_mib"] = (torch.cuda.max_memory_allocated(device) - cuda_before) / 2**20
    result.update(
        peak_rss_delta_mib=mem["peak_mib"],
        memory_method=mem["method"],
        rss_before_mib=mem["rss_before_mib"],
        peak_rss_mib=rss_kib("VmHWM") / 1024,
        windows=len(windows),
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="tiny", help="tiny, lite_medsam, vit_b, ...")
    parser.add_argument("--bundle-widths", action="store_true", help="the bundle's generator/mask-head widths")
    parser.add_argument("--roi", type=int, default=512, help="in-plane ROI S (bundle: 512)")
    parser.add_argument("--slices", type=int, default=9, help="T (bundle: 9)")
    parser.add_argument("--queries", type=int, default=24)
    parser.add_argument("--classes", type=int, default=16)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 64], help="volume H W D")
    started = begin_benchmark(parser, measure_child)
    if started is None:
        return
    args, device, dtype, info = started
    spec = {
        k: getattr(args, k)
        for k in ("backbone", "bundle_widths", "roi", "slices", "queries", "classes", "overlap", "shape")
    }
    spec.update(device=str(device), dtype=str(dtype).removeprefix("torch."))
    print(f"# sliding window: {spec}")
    res = run_child(__file__, spec, [f"--threads={torch.get_num_threads()}"])
    gpu = f", CUDA peak {res['cuda_peak_mib']:.0f} MiB" if "cuda_peak_mib" in res else ""
    print(
        f"volume {'x'.join(map(str, args.shape))}: {res['seconds']:.1f}s, {res['windows']} windows "
        f"({res['seconds'] / res['windows']:.2f}s each), peak RSS +{res['peak_rss_delta_mib']:.0f} MiB over the call "
        f"(process high-water {res['peak_rss_mib']:.0f} MiB){gpu}",
        flush=True,
    )
    print_result("sliding_window", {"config": spec, **res, "machine": info})


if __name__ == "__main__":
    main()
