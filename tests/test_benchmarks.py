# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""The benchmark scripts run end to end on tiny settings and print their machine-readable result.

Correctness only (numerical agreement, shapes, the structure of the result); no timing is asserted.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

pytestmark = pytest.mark.xdist_group("benchmarks")


def run_with_output(script: str, *args: str) -> tuple[dict, str]:
    """The ``RESULT`` dict of a benchmark run on one thread, and its whole standard output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--threads", "1", *args],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, proc.stdout[-3000:]
    return json.loads(lines[0][len("RESULT ") :]), proc.stdout


def run(script: str, *args: str) -> dict:
    return run_with_output(script, *args)[0]


def import_benchmark(name: str):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_attention_benchmark_agrees_with_segment_anything() -> None:
    result = run("attention.py", "--backbone", "tiny", "--sizes", "64", "--repeats", "1", "--warmup", "0")
    (row,) = result["rows"]
    assert row["size"] == 64 and row["max_abs_diff"] < 1e-4
    assert row["peak_mib"]["ours"] >= 0 and row["peak_mib"]["segment_anything"] >= 0
    assert any("scaled_dot_product" in k for k in result["kernels"]["inference"])


def test_train_step_benchmark_reports_both_variants() -> None:
    result = run("train_step.py", "--backbone", "tiny", "--size", "32", "--slices", "4", "--queries", "3",
                 "--classes", "2", "--repeats", "1", "--warmup", "0")  # fmt: skip
    saved = result["saved_activations_mib"]
    assert saved["checkpointing"] < saved["no_checkpointing"], "checkpointing keeps fewer activations"
    assert set(result["step_s"]) == set(result["peak_mib"]) == {"no_checkpointing", "checkpointing"}


def test_inference_and_sliding_window_benchmarks_run() -> None:
    per_slice = run("inference_per_slice.py", "--configs", "tiny:32", "--repeats", "1")
    (row,) = per_slice["rows"]
    assert row["config"] == "tiny:32" and row["per_slice_s"]["masksam"] > 0
    assert row["per_slice_s"]["masksam_no_grad"] > 0 and row["no_grad_vs_inference_mode"] > 0
    window = run("sliding_window.py", "--roi", "32", "--slices", "4", "--queries", "3", "--classes", "2",
                 "--shape", "40", "36", "10")  # fmt: skip
    assert window["pred_shape"] == [1, 2, 40, 36, 10] and window["windows"] >= 4


def test_inference_benchmark_times_a_baseline_commit(tmp_path: Path) -> None:
    """``--baseline REV``: the baseline runs from a temporary git worktree of REV (removed afterwards). The
    compiled variant (``--compile``) runs the same child with ``compile=True`` (tests/networks/test_compile.py)."""
    result = run("inference_per_slice.py", "--configs", "tiny:32", "--repeats", "1", "--no-parts",
                 "--baseline", "HEAD", "--worktree-dir", str(tmp_path))  # fmt: skip
    assert result["rows"] == [], "--no-parts: only the child processes"
    (row,) = result["commits"]
    variants = row["variants"]
    assert set(variants) == {"current", "baseline"}
    assert Path(variants["baseline"]["package"]).parent.parent == tmp_path, "the baseline imports the worktree"
    assert Path(variants["current"]["package"]) == BENCHMARKS.parent / "masksam"
    assert set(row["ratios_vs_baseline"]) == {"current"}
    assert list(tmp_path.iterdir()) == [], "the worktree is removed"


def test_train_step_benchmark_can_measure_the_checkpointed_step_alone() -> None:
    """Where a step without checkpointing would not fit, only the checkpointed one runs (and no timing)."""
    result = run("train_step.py", "--backbone", "tiny", "--size", "32", "--slices", "4", "--queries", "3",
                 "--classes", "2", "--no-time", "--peak-variants", "checkpointing")  # fmt: skip
    assert set(result["peak_mib"]) == {"checkpointing"} and "step_s" not in result
    assert "peak_memory_ratio" not in result and result["peak_memory_ratio_at_most"] > 0


def test_saved_activation_count_without_holding_equals_a_held_count() -> None:
    """The weak-reference count (nothing kept) equals counting the storages autograd really keeps."""
    import torch

    train_step = import_benchmark("train_step")
    spec = {"backbone": "tiny", "size": 32, "slices": 4, "queries": 3, "classes": 2, "batch": 1}
    counted = train_step.saved_activations_mib(spec, torch.device("cpu"), torch.float32)
    net, _, forward_loss, existing = train_step.build(spec, torch.device("cpu"), torch.float32)
    own = {t.untyped_storage().data_ptr() for t in [*net.parameters(), *net.buffers()]}
    image = existing[-2]
    for variant, flag in train_step.VARIANTS.items():
        net.set_gradient_checkpointing(flag)
        held: dict[int, int] = {}

        def pack(t, held=held):
            if t.untyped_storage().data_ptr() not in own:
                held[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t  # kept alive by autograd, so no address is reused while counting

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = forward_loss()
        # The input volume is saved (by the stem's first convolution) but existed before the step.
        assert image.untyped_storage().data_ptr() in held, "the held count sees the input"
        activations = sum(held.values()) - image.untyped_storage().nbytes()
        assert counted[variant] == pytest.approx(activations / 2**20, abs=0.1), variant
        del loss


NUMBER = r"(-?[0-9]+(?:\.[0-9]+)?)"


def test_ma_sam_benchmark_prints_its_figures() -> None:
    """Forward vs our plain encoder with its parts, slice-window cost per slice, training memory: all printed."""
    result, out = run_with_output("ma_sam.py", "--backbone", "tiny", "--size", "64", "--volume-slices", "6",
                                  "--rounds", "1", "--warmup", "0")  # fmt: skip
    forward = re.search(rf"ratio {NUMBER} \(target <= 1.5\).*flop ratio {NUMBER}", out)
    window = re.search(rf"^slice window .*stride 1 {NUMBER}s per volume slice.*ratio {NUMBER}$", out, re.M)
    memory = re.search(rf"^training step .*ratio {NUMBER} \(target <= 0.5\)", out, re.M)
    assert forward and window and memory, out
    assert all(float(v) > 0 for m in (forward, window, memory) for v in m.groups())
    ma_sam = import_benchmark("ma_sam")
    for label, _ in (*ma_sam.ROWS, ("total", None), ("our plain encoder (baseline)", None)):
        row = re.search(rf"^  {re.escape(label)} +{NUMBER} +{NUMBER}% +{NUMBER} ", out, re.M)
        assert row, f"{label!r} not printed with its figures:\n{out}"
    fwd = result["forward"]
    assert sum(fwd["parts_s"].values()) == pytest.approx(fwd["time_s"]["ma_sam"], abs=1e-3), "parts add up"
    assert fwd["parts_gflops"]["encoder blocks, 3D adapters"] > 0 and fwd["parts_gflops"]["encoder blocks, FacT"] > 0
    assert fwd["gflops"]["ma_sam"] > fwd["gflops"]["plain_encoder"] > 0
    win = result["window"]
    # Stride 1: a window per slice; stride T: ceil((D - 1) / T) + 1 windows over the volume padded by T - 1 edge slices.
    assert win["windows"] == {"stride_1": 6, "stride_5": 2}
    mem = result["memory"]
    assert mem["saved_activations_mib"]["checkpointing"] < mem["saved_activations_mib"]["no_checkpointing"]
    assert set(mem["peak_mib"]) == {"no_checkpointing", "checkpointing"}


def test_module_flops_counts_adapters_and_cpu_attention() -> None:
    """The per-module FLOP count: a 3D adapter's products and convolution, and CPU's fused attention kernel."""
    import torch

    from masksam.adapters import SliceConvAdapter3D

    common = import_benchmark("common")
    dim, hidden, n, h, w = 16, 8, 6, 4, 4
    adapter = SliceConvAdapter3D(dim, hidden)
    flops = common.module_flops(lambda: adapter(torch.rand(n, h, w, dim), 3))
    tokens = n * h * w
    assert flops["down"] == flops["up"] == 2 * tokens * dim * hidden
    assert flops["conv"] == 2 * tokens * hidden * hidden * 3  # (3, 1, 1) kernel, 'same' padding
    assert flops[""] == flops["down"] + flops["conv"] + flops["up"]
    q, k, v = torch.rand(2, 3, 10, 8), torch.rand(2, 3, 7, 8), torch.rand(2, 3, 7, 5)
    bias = torch.rand(2, 3, 10, 7)
    sdpa = common.module_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias))
    assert sdpa[""] == 2 * 2 * 3 * 10 * 7 * (8 + 5)


def test_med_sa_benchmark_times_each_prompt_after_the_first() -> None:
    result = run("med_sa.py", "--backbone", "tiny", "--size", "64", "--slices", "4", "--rounds", "1")
    assert set(result["time_s"]) == {"first", "next", "refine"}
    assert result["ratio_next_vs_first"] == pytest.approx(
        result["time_s"]["next"] / result["time_s"]["first"], rel=1e-2
    )
    rows = import_benchmark("run_all").summary({"med_sa": result})
    assert rows[0][0].startswith("Med-SA next prompt tiny 64x64x4") and rows[0][2] == "<= 5%"


def test_sam_unet_benchmark_prints_each_part_beside_its_flops() -> None:
    """Per-slice SAM-UNet against our encoder on the same slice, for ResNet-34 and -50: parts with their FLOPs."""
    result, out = run_with_output("sam_unet.py", "--backbone", "tiny", "--size", "64", "--rounds", "1", "--warmup", "0")
    assert set(result["rows"]) == {"resnet34", "resnet50"}
    assert re.search(rf"resnet34, one 64x64 slice .* ratio {NUMBER} \(target <= 1.5\).*flop ratio {NUMBER}", out), out
    sam_unet = import_benchmark("sam_unet")
    for label, _ in (*sam_unet.ROWS, ("total", None), ("our plain encoder (baseline)", None)):
        assert len(re.findall(rf"^  {re.escape(label)} +{NUMBER} +{NUMBER}% +{NUMBER} ", out, re.M)) == 2, label
    for row in result["rows"].values():
        assert sum(row["parts_s"].values()) == pytest.approx(row["time_s"]["sam_unet"], abs=1e-3), "parts add up"
        assert sum(row["parts_gflops"].values()) == pytest.approx(row["gflops"]["sam_unet"], abs=2e-3)
        assert row["parts_gflops"]["ResNet branch"] > 0 and row["parts_gflops"]["reshapers (to the token grids)"] > 0
    r34, r50 = result["rows"]["resnet34"], result["rows"]["resnet50"]
    assert r50["parameters"]["trainable"] > r34["parameters"]["trainable"] > 0
    rows = import_benchmark("run_all").summary({"sam_unet": result})
    assert [r[2] for r in rows] == ["<= 1.5x", "-"] and rows[0][0].startswith("SAM-UNet per slice tiny + resnet34")
