# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from masksam.visualize import overlay_slices, save_overlay_png, save_training_curves

SHAPE = (32, 40, 24)


def _volume() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"))
    image = (np.random.default_rng(0).normal(size=SHAPE) * 10 + grid[0] * 3).astype(np.float32)
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[np.linalg.norm(grid - np.array([10, 20, 12])[:, None, None, None], axis=0) < 5] = 1
    label[np.linalg.norm(grid - np.array([24, 20, 12])[:, None, None, None], axis=0) < 4] = 2
    pred = np.roll(label, 2, axis=1)
    return image, label, pred


def _png_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size  # (width, height)


def test_overlay_png_two_columns(tmp_path: Path) -> None:
    image, label, pred = _volume()
    out = save_overlay_png(
        image, label, pred, tmp_path / "a" / "b" / "overlay.png", class_names=["bg", "left", "right"], title="toy",
        panel_px=128,
    )  # fmt: skip
    assert out == tmp_path / "a" / "b" / "overlay.png" and out.is_file()
    assert out.stat().st_size > 10_000
    assert _png_size(out) == (2 * 128, 3 * 128 + 72)


def test_overlay_png_single_column_and_no_segmentation(tmp_path: Path) -> None:
    image, label, _ = _volume()
    out = save_overlay_png(image, label, None, tmp_path / "gt.png", spacing=(1.0, 1.0, 2.5), slices=(5, 6, 7))
    assert _png_size(out) == (256, 3 * 256 + 72)
    out = save_overlay_png(image, None, None, tmp_path / "img.png", panel_px=100)
    assert _png_size(out) == (100, 3 * 100 + 72) and out.stat().st_size > 5_000


def test_overlay_png_rejects_bad_inputs(tmp_path: Path) -> None:
    image, label, pred = _volume()
    with pytest.raises(ValueError, match="label shape"):
        save_overlay_png(image, label[:, :, :-1], pred, tmp_path / "x.png")
    with pytest.raises(ValueError, match="pred shape"):
        save_overlay_png(image, label, pred[:-1], tmp_path / "x.png")
    with pytest.raises(ValueError, match="3D"):
        save_overlay_png(image[0], None, None, tmp_path / "x.png")
    with pytest.raises(ValueError, match="class value 2"):
        save_overlay_png(image, label, pred, tmp_path / "x.png", class_names=["bg", "one"])
    with pytest.raises(ValueError, match="out of range"):
        save_overlay_png(image, label, pred, tmp_path / "x.png", slices=(0, 0, 24))
    with pytest.raises(ValueError, match="spacing"):
        save_overlay_png(image, label, pred, tmp_path / "x.png", spacing=(1.0, 1.0))
    assert not (tmp_path / "x.png").exists()


def test_overlay_slices() -> None:
    image, label, _ = _volume()
    # two blobs at x=10 and x=24 with a gap between: the centre of mass x=15 cuts nothing, so x moves to a blob
    i, j, k = overlay_slices(image.shape, label)
    assert i == 12 and j == 20 and k == 12  # the blob's largest slices are 8..12
    assert overlay_slices(SHAPE, None, None) == (16, 20, 12)
    assert overlay_slices(SHAPE, np.zeros(SHAPE), label) == (12, 20, 12)


def test_training_curves(tmp_path: Path) -> None:
    history = {"train_loss": [1.0, 0.7, 0.5, 0.45], "val_loss": [1.1, 0.8], "val_dice": [0.2, 0.5, 0.6]}
    out = save_training_curves(history, tmp_path / "curves" / "c.png", title="toy run")
    assert out.is_file() and out.stat().st_size > 10_000
    assert _png_size(out) == (1000, 360)
    out = save_training_curves({"loss": [3.0, 2.0]}, tmp_path / "one.png")
    assert _png_size(out) == (500, 360)
    with pytest.raises(ValueError, match="empty"):
        save_training_curves({}, tmp_path / "e.png")
    with pytest.raises(ValueError, match="val_dice"):
        save_training_curves({"loss": [1.0], "val_dice": []}, tmp_path / "e.png")


def test_import_does_not_load_matplotlib() -> None:
    code = (
        "import sys, masksam.visualize, masksam.data; sys.exit('matplotlib' in sys.modules or 'monai' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
