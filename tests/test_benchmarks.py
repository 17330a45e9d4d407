# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""The benchmark scripts run end to end on tiny settings and print their machine-readable result.

Correctness only (numerical agreement, shapes, the structure of the result); no timing is asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

pytestmark = pytest.mark.xdist_group("benchmarks")


def run(script: str, *args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--threads", "1", *args],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, proc.stdout[-3000:]
    return json.loads(lines[0][len("RESULT ") :])


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

    sys.path.insert(0, str(BENCHMARKS))
    try:
        import train_step
    finally:
        sys.path.remove(str(BENCHMARKS))
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
