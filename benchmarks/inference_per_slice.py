# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Full MaskSAM inference per slice vs the plain SAM image encoder at the same input and backbone.

For each configuration ``backbone:size`` it builds the bundle's network
(``SemanticWrapper(build_masksam(...))``, bundle defaults: Q=24, K=16, T=9 slices, adapter widths 32,
generator widths 192-96-96-48-48, mask head 32) and times, interleaved, under ``torch.inference_mode``:

- ``masksam``: one ``(1, 1, S, S, T)`` patch -> ``(1, K, S, S, T)`` class scores;
- ``sam_encoder``: the backbone's own image encoder (segment_anything's ViT, or LiteMedSAM's TinyViT) on
  the same T slices ``(T, 3, S, S)``;
- ``our_encoder``: our slice-stack encoder without adapters on the same slices (SDPA attention): the
  like-for-like baseline of MaskSAM's cost;
- ``masksam_no_grad``: the MaskSAM call under ``torch.no_grad`` instead, as the bundles run it (MONAI's
  evaluator and sliding-window stitching write into the network's outputs in place, which inference
  tensors forbid outside inference mode); printed as the time ratio to ``masksam``.

Per-slice times are medians / T; it prints MaskSAM's ratio to both encoders, naming each. The MaskSAM
time is split by module (forward hooks: stem, encoder, prompt generator, prompt encoder, decoder, mask
head; the rest is box/prompt glue and the semantic fusion), and the process CPU time (all threads) of
a MaskSAM forward is printed beside its wall time. ``tiny`` uses the test configuration of
``tests/networks/test_masksam.py`` (32x32x4, Q=3, K=2, small widths).

Commits side by side (``--baseline REV``, ``--compile``): per configuration, fresh child processes time
the bundles' call (``torch.no_grad``, one patch) with this checkout's code, with it compiled
(``build_masksam(compile=True)``; the compilation runs in the warm-up), and with the code of ``REV``
(checked out in a temporary ``git worktree`` under ``build/``, imported through ``PYTHONPATH``); the ratios
to the baseline are printed. ``--rounds N`` repeats the variants N times, interleaved, and takes medians.

    python benchmarks/inference_per_slice.py                       # vit_b:256, tiny:32, lite_medsam:128
    python benchmarks/inference_per_slice.py --configs vit_b:512 --repeats 1   # bundle size, ~3 min
    python benchmarks/inference_per_slice.py --configs vit_b:512 --baseline 073ff27 --compile --rounds 3 --no-parts
    python benchmarks/inference_per_slice.py --device cuda --dtype bf16 --configs vit_b:512 vit_h:512
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from common import ModuleTimer, begin_benchmark, print_result, run_child, synchronize

# Only names the baseline commits have too: a child process may import another commit's package.
import masksam
from masksam.backbones import build_sam
from masksam.inferers import SemanticWrapper
from masksam.networks import build_masksam

REPO = Path(__file__).resolve().parents[1]

PARTS = ("stem", "encoder", "prompt_generator", "prompt_encoder", "decoder", "mask_head")
TINY = {
    "num_slices": 4,
    "num_queries": 3,
    "num_classes": 2,
    "generator_widths": [32, 16, 16, 8, 8],
    "mask_head_channels": 8,
}


def network_kwargs(backbone: str, args: argparse.Namespace) -> dict[str, Any]:
    if backbone == "tiny":
        return dict(TINY)
    kw: dict[str, Any] = {"num_slices": args.slices, "num_queries": args.queries, "num_classes": args.classes}
    if backbone != "lite_medsam":  # its stride-4 neck has 2 up-sampling stages: the builder's default widths
        kw["generator_widths"] = [192, 96, 96, 48, 48]
    return kw


def run_config(backbone: str, size: int, args: argparse.Namespace, device: torch.device, dtype: torch.dtype):
    from masksam.backbones import build_encoder3d

    torch.manual_seed(0)
    kw = network_kwargs(backbone, args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # timm deprecation warnings of the TinyViT package
        wrapper = SemanticWrapper(build_masksam(backbone, image_size=size, **kw)).to(device).eval()
    net = wrapper.network
    t = kw["num_slices"]
    x = torch.rand(1, 1, size, size, t, device=device)
    slices = torch.rand(t, 3, size, size, device=device)

    def no_grad_mode() -> torch.Tensor:  # the bundles' mode: MONAI's evaluator runs under torch.no_grad
        with torch.inference_mode(False), torch.no_grad():
            return wrapper(x)

    # A second copy of the backbone (random weights: the timing does not depend on their values).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        sam_encoder = build_sam(backbone, image_size=size).image_encoder.to(device).eval()
    ours = build_encoder3d(sam_encoder).to(device).eval()
    calls = {
        "masksam": lambda: wrapper(x),
        "masksam_no_grad": no_grad_mode,
        "sam_encoder": lambda: sam_encoder(slices),
        "our_encoder": lambda: ours(slices, t),
    }
    timer = ModuleTimer({name: [getattr(net, name)] for name in PARTS}, device)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    wall: dict[str, list[float]] = {k: [] for k in calls}
    cpu: list[float] = []
    parts: list[dict[str, float]] = []
    with torch.inference_mode(), autocast:
        for _ in range(args.warmup):
            for fn in calls.values():
                fn()
        for _ in range(args.repeats):
            for name, fn in calls.items():
                timer.times = {}
                synchronize(device)
                w0, c0 = time.perf_counter(), time.process_time()
                fn()
                synchronize(device)
                wall[name].append(time.perf_counter() - w0)
                if name == "masksam":
                    cpu.append(time.process_time() - c0)
                    parts.append(dict(timer.times))
    med = {k: statistics.median(v) for k, v in wall.items()}
    part_med = {p: statistics.median(d.get(p, 0.0) for d in parts) for p in PARTS}
    part_med["other"] = med["masksam"] - sum(part_med.values())
    row = {
        "config": f"{backbone}:{size}",
        "slices": t,
        "queries": kw["num_queries"],
        "classes": kw["num_classes"],
        "time_s": {k: round(v, 3) for k, v in med.items()},
        "per_slice_s": {k: round(v / t, 4) for k, v in med.items()},
        "masksam_cpu_s": round(statistics.median(cpu), 2),
        "masksam_parts_s": {k: round(v, 3) for k, v in part_med.items()},
        "ratio_vs_sam_encoder": round(med["masksam"] / med["sam_encoder"], 2),
        "ratio_vs_our_encoder": round(med["masksam"] / med["our_encoder"], 2),
        "no_grad_vs_inference_mode": round(med["masksam_no_grad"] / med["masksam"], 3),
    }
    return row


def measure_commit(spec: dict[str, Any]) -> dict[str, Any]:
    """Child process: the bundles' call (``no_grad``, one patch) with whatever ``masksam`` is importable."""
    torch.manual_seed(0)
    device = torch.device(spec["device"])
    args = argparse.Namespace(slices=spec["slices"], queries=spec["queries"], classes=spec["classes"])
    kw = network_kwargs(spec["backbone"], args)
    if spec["compile"]:
        kw["compile"] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        wrapper = SemanticWrapper(build_masksam(spec["backbone"], image_size=spec["size"], **kw)).to(device).eval()
    x = torch.rand(1, 1, spec["size"], spec["size"], kw["num_slices"], device=device)
    dtype = getattr(torch, spec["dtype"])
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    times = []
    with torch.no_grad(), autocast:
        start = time.perf_counter()
        for _ in range(spec["warmup"]):
            wrapper(x)
            synchronize(device)
        warmup = time.perf_counter() - start
        for _ in range(spec["repeats"]):
            start = time.perf_counter()
            wrapper(x)
            synchronize(device)
            times.append(time.perf_counter() - start)
    return {
        "per_slice_s": statistics.median(times) / kw["num_slices"],
        "runs_s": [round(t, 3) for t in times],
        "warmup_s": round(warmup, 1),
        "package": os.path.dirname(masksam.__file__),
    }


@contextlib.contextmanager
def baseline_tree(rev: str, parent: Path) -> Iterator[Path]:
    """A ``git worktree`` of ``rev`` in a new folder under ``parent``, removed afterwards."""
    sha = subprocess.run(["git", "rev-parse", rev], cwd=REPO, check=True, capture_output=True, text=True).stdout.strip()
    parent.mkdir(parents=True, exist_ok=True)
    tree = Path(tempfile.mkdtemp(prefix=f"baseline-{sha[:12]}-", dir=parent))
    subprocess.run(["git", "worktree", "add", "--detach", "--force", str(tree), sha], cwd=REPO, check=True)
    try:
        yield tree
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, check=False)


def compare_commits(config: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict:
    """This checkout (plain, compiled) and the baseline commit, each timed in its own child process."""
    backbone, size = config.split(":")
    spec = {
        "backbone": backbone, "size": int(size), "slices": args.slices, "queries": args.queries,
        "classes": args.classes, "device": str(device), "dtype": str(dtype).removeprefix("torch."),
        "repeats": args.repeats, "warmup": max(1, args.warmup), "compile": False,
    }  # fmt: skip
    variants: dict[str, tuple[dict, dict[str, str]]] = {"current": (spec, {})}
    if args.compile:
        variants["current_compiled"] = ({**spec, "compile": True}, {})
    extra = [f"--threads={torch.get_num_threads()}"]
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    with contextlib.ExitStack() as stack:
        if args.baseline:
            tree = stack.enter_context(baseline_tree(args.baseline, Path(args.worktree_dir)))
            variants["baseline"] = (spec, {"PYTHONPATH": f"{tree}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
            runs["baseline"] = []
        for _ in range(args.rounds):  # variants interleaved round by round: the machine's drift hits all alike
            for name, (s, env) in variants.items():
                runs[name].append(run_child(__file__, s, extra, env=env))
    results = {
        name: {
            "per_slice_s": statistics.median(r["per_slice_s"] for r in rs),
            "rounds_per_slice_s": [round(r["per_slice_s"], 3) for r in rs],
            "warmup_s": [r["warmup_s"] for r in rs],
            "package": rs[0]["package"],
        }
        for name, rs in runs.items()
    }
    row: dict[str, Any] = {"config": config, "baseline": args.baseline, "variants": results}
    if args.baseline:
        base = results["baseline"]["per_slice_s"]
        row["ratios_vs_baseline"] = {
            k: round(v["per_slice_s"] / base, 3) for k, v in results.items() if k != "baseline"
        }
        row["ratios_per_round"] = {
            k: [round(a["per_slice_s"] / b["per_slice_s"], 3) for a, b in zip(rs, runs["baseline"], strict=True)]
            for k, rs in runs.items()
            if k != "baseline"
        }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["vit_b:256", "tiny:32", "lite_medsam:128"])
    parser.add_argument("--slices", type=int, default=9, help="T (not for tiny)")
    parser.add_argument("--queries", type=int, default=24, help="Q (not for tiny)")
    parser.add_argument("--classes", type=int, default=16, help="K (not for tiny)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--baseline", default=None, help="a commit to time beside this checkout (git worktree)")
    parser.add_argument("--compile", action="store_true", help="also time this checkout with compile=True")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of the commit variants, interleaved")
    parser.add_argument("--worktree-dir", default=str(REPO / "build"), help="where the baseline's worktree goes")
    parser.add_argument("--no-parts", action="store_true", help="skip the in-process timing (with --baseline)")
    started = begin_benchmark(parser, measure_commit)
    if started is None:
        return
    args, device, dtype, info = started
    rows = []
    commits = []
    for config in args.configs if (args.baseline or args.compile) else []:
        row = compare_commits(config, args, device, dtype)
        commits.append(row)
        times = ", ".join(f"{k} {v['rounds_per_slice_s']}" for k, v in row["variants"].items())
        print(
            f"{config:16s} per slice, no_grad, by round: {times}  median ratios to {args.baseline}: "
            f"{row.get('ratios_vs_baseline')}, by round: {row.get('ratios_per_round')}"
        )
    for config in [] if args.no_parts else args.configs:
        backbone, size = config.split(":")
        row = run_config(backbone, int(size), args, device, dtype)
        rows.append(row)
        per = row["per_slice_s"]
        print(
            f"{config:16s} T={row['slices']} Q={row['queries']} K={row['classes']}  per slice: masksam "
            f"{per['masksam']:.3f}s, our encoder {per['our_encoder']:.3f}s (ratio {row['ratio_vs_our_encoder']:.2f}), "
            f"the backbone's own encoder {per['sam_encoder']:.3f}s (ratio {row['ratio_vs_sam_encoder']:.2f})"
            f"  | one forward {row['time_s']['masksam']:.2f}s wall, "
            f"{row['masksam_cpu_s']:.1f}s CPU  | under no_grad instead of inference_mode: "
            f"x{row['no_grad_vs_inference_mode']:.3f}  | parts {row['masksam_parts_s']}",
            flush=True,
        )
    print_result(
        "inference_per_slice",
        {
            "device": str(device),
            "dtype": str(dtype).removeprefix("torch."),
            "rows": rows,
            "commits": commits,
            "machine": info,
        },
    )


if __name__ == "__main__":
    main()
