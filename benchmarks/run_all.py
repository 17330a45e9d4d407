# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Run every benchmark (``make bench``), then print the machine and a summary table.

Each script runs in its own process; its output streams through and its final ``RESULT {json}`` line is
collected. Every script runs with its defaults, but MA-SAM with one timed round and a 10-slice volume (``ARGS``)
to keep the whole run short. ``--device``/``--dtype`` are passed on to every script.

    python benchmarks/run_all.py
    python benchmarks/run_all.py --only attention train_step
    python benchmarks/run_all.py --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

from common import machine

SCRIPTS = ("attention", "inference_per_slice", "train_step", "sliding_window", "ma_sam", "med_sa", "sam_unet")
HERE = os.path.dirname(os.path.abspath(__file__))
#: Arguments of a script besides its defaults, to keep the whole run within its budget.
ARGS = {"ma_sam": ["--rounds", "1", "--volume-slices", "10"]}


def run(name: str, extra: list[str]) -> dict[str, Any] | None:
    cmd = [sys.executable, os.path.join(HERE, f"{name}.py"), *ARGS.get(name, []), *extra]
    print(f"\n=== {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    result = None
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
    rc = proc.wait()
    print(f"=== {name}: rc {rc}, {time.perf_counter() - start:.0f}s", flush=True)
    return result if rc == 0 else None


def summary(results: dict[str, dict[str, Any] | None]) -> list[tuple[str, str, str]]:
    """Rows (question, figure, target) of the summary table."""
    rows: list[tuple[str, str, str]] = []
    att = results.get("attention")
    if att:
        for r in att["rows"]:
            mem = f", peak memory x{r['peak_memory_ratio']}" if "peak_memory_ratio" in r else ""
            target = ">= 2x faster" if r["size"] >= 1024 else "not slower"
            rows.append(
                (
                    f"encoder attention {att['backbone']} {r['size']}px",
                    f"{r['time_s']['segment_anything']:.2f}s -> {r['time_s']['ours']:.2f}s, "
                    f"{r['speedup']:.2f}x faster{mem}, max|diff| {r['max_abs_diff']:.1e}",
                    target,
                )
            )
    inf = results.get("inference_per_slice")
    if inf:
        for r in inf["rows"]:
            rows.append(
                (
                    f"inference per slice {r['config']} T={r['slices']} Q={r['queries']}",
                    f"masksam {r['per_slice_s']['masksam']:.3f}s vs our encoder {r['per_slice_s']['our_encoder']:.3f}s "
                    f"= {r['ratio_vs_our_encoder']:.2f}x, vs segment_anything's {r['per_slice_s']['sam_encoder']:.3f}s "
                    f"= {r['ratio_vs_sam_encoder']:.2f}x",
                    "-",
                )
            )
    tr = results.get("train_step")
    if tr:
        c = tr["config"]
        time_txt = (
            f"{tr['step_s']['no_checkpointing']:.1f}s / {tr['step_s']['checkpointing']:.1f}s" if "step_s" in tr else ""
        )
        mem_txt = (
            f", peak {tr['peak_mib']['no_checkpointing']:.0f} / {tr['peak_mib']['checkpointing']:.0f} MiB "
            f"= x{tr['peak_memory_ratio']}"
            if "peak_mib" in tr
            else ""
        )
        rows.append(
            (
                f"train step {c['backbone']} {c['size']}x{c['size']}x{c['slices']} b{c['batch']} (no ckpt / ckpt)",
                time_txt + mem_txt,
                "memory <= 0.5x",
            )
        )
    sw = results.get("sliding_window")
    if sw:
        c = sw["config"]
        rows.append(
            (
                f"sliding window {'x'.join(map(str, c['shape']))} {c['backbone']} roi {c['roi']}x{c['roi']}x{c['slices']}",
                f"{sw['seconds']:.1f}s ({sw['windows']} windows), peak RSS +{sw['peak_rss_delta_mib']:.0f} MiB "
                f"(high-water {sw['peak_rss_mib']:.0f} MiB)",
                "-",
            )
        )
    ma = results.get("ma_sam")
    if ma:
        c = ma["config"]
        crop = f"{c['backbone']} {c['size']}x{c['size']}x{c['slices']}"
        if "forward" in ma:
            f = ma["forward"]
            rows.append(
                (
                    f"MA-SAM forward {crop} vs our plain encoder",
                    f"{f['time_s']['ma_sam']:.2f}s vs {f['time_s']['plain_encoder']:.2f}s = "
                    f"{f['ratio_vs_plain_encoder']:.2f}x (FLOPs {f['flop_ratio_vs_plain_encoder']:.2f}x)",
                    "<= 1.5x",
                )
            )
        if "window" in ma:
            w = ma["window"]
            per = w["per_volume_slice_s"]
            t = c["slices"]
            rows.append(
                (
                    f"MA-SAM slice window {w['volume'][-1]} slices, stride 1 vs {t}",
                    f"{per['stride_1']:.2f}s vs {per[f'stride_{t}']:.2f}s per volume slice = "
                    f"{w['ratio_stride_1_vs_stride_t']:.2f}x",
                    "-",
                )
            )
        if "memory" in ma:
            m = ma["memory"]
            rows.append(
                (
                    f"MA-SAM train step {crop} b{m['batch']} (no ckpt / ckpt)",
                    f"peak {m['peak_mib']['no_checkpointing']:.0f} / {m['peak_mib']['checkpointing']:.0f} MiB "
                    f"= x{m['peak_memory_ratio']:.2f}",
                    "memory <= 0.5x",
                )
            )
    med = results.get("med_sa")
    if med:
        c, t = med["config"], med["time_s"]
        rows.append(
            (
                f"Med-SA next prompt {c['backbone']} {c['size']}x{c['size']}x{c['slices']} vs first (encoder + decoder)",
                f"{t['next']:.3f}s vs {t['first']:.2f}s = {100 * med['ratio_next_vs_first']:.1f}%; refining click "
                f"{100 * med['ratio_refine_vs_first']:.1f}%",
                "<= 5%",
            )
        )
    su = results.get("sam_unet")
    if su:
        c = su["config"]
        for cnn, r in su["rows"].items():
            t = r["time_s"]
            rows.append(
                (
                    f"SAM-UNet per slice {c['backbone']} + {cnn} {c['size']}x{c['size']} vs our encoder",
                    f"{t['sam_unet']:.3f}s vs {t['plain_encoder']:.3f}s = {r['ratio_vs_plain_encoder']:.2f}x "
                    f"(FLOPs {r['flop_ratio_vs_plain_encoder']:.2f}x); {r['parameters']['total'] / 1e6:.1f}M "
                    f"parameters, {r['parameters']['trainable'] / 1e6:.1f}M trainable",
                    "<= 1.5x" if cnn == "resnet34" else "-",
                )
            )
    for name, res in results.items():
        if res is None:
            rows.append((name, "FAILED", "-"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=SCRIPTS, default=list(SCRIPTS))
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    args = parser.parse_args()
    extra = []
    if args.device:
        extra += ["--device", args.device]
    if args.dtype:
        extra += ["--dtype", args.dtype]
    results = {name: run(name, extra) for name in args.only}
    info = machine()
    print("\n# machine")
    for key, value in info.items():
        print(f"  {key}: {value}")
    rows = summary(results)
    widths = [max(len(r[i]) for r in rows + [("question", "figures", "target")]) for i in range(3)]
    print()
    for row in [("question", "figures", "target"), tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    failed = [name for name, res in results.items() if res is None]
    print("RESULT " + json.dumps({"benchmark": "run_all", "machine": info, "results": results}, sort_keys=True))
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
