# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import pytest
import torch
from segment_anything import sam_model_registry

from masksam.backbones import (
    CheckpointError,
    build_sam,
    load_sam_checkpoint,
    read_state_dict,
    resize_pos_embed,
    resize_rel_pos,
)


@pytest.fixture(scope="module")
def vit_b_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A randomly initialised official ViT-B saved exactly as Meta's ``sam_vit_b_01ec64.pth`` (plain state dict)."""
    torch.manual_seed(1)
    sam = sam_model_registry["vit_b"]()
    # Official checkpoints have non-zero position tables; make them non-trivial so resizing is visible.
    with torch.no_grad():
        for name, p in sam.named_parameters():
            if "rel_pos" in name or name.endswith("pos_embed"):
                p.normal_()
    path = tmp_path_factory.mktemp("ckpt") / "sam_vit_b_random.pth"
    torch.save(sam.state_dict(), path)
    return str(path)


def test_tiny_shapes() -> None:
    sam = build_sam("tiny", image_size=64)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        emb = sam.image_encoder(x)
    assert emb.shape == (2, 64, 4, 4)
    assert sam.prompt_encoder.get_dense_pe().shape == (1, 64, 4, 4)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        build_sam("tiny", image_size=70)
    with pytest.raises(ValueError, match="unknown SAM backbone 'vit_x'"):
        build_sam("vit_x")


def test_vit_b_round_trip_at_1024(vit_b_checkpoint: str) -> None:
    official = sam_model_registry["vit_b"](checkpoint=None)
    official.load_state_dict(torch.load(vit_b_checkpoint, weights_only=True))
    ours = build_sam("vit_b", image_size=1024, checkpoint=vit_b_checkpoint)
    ref, got = official.state_dict(), ours.state_dict()
    assert ref.keys() == got.keys()
    for key in ref:
        assert torch.equal(ref[key], got[key]), key
    # The decoder side runs on the loaded weights exactly as the official model does.
    emb = torch.randn(1, 256, 64, 64)
    boxes = torch.tensor([[[100.0, 200.0, 400.0, 500.0]]])
    with torch.no_grad():
        outs = []
        for model in (official, ours):
            sparse, dense = model.prompt_encoder(points=None, boxes=boxes[0], masks=None)
            outs.append(model.mask_decoder(emb, model.prompt_encoder.get_dense_pe(), sparse, dense, False)[0])
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_vit_b_resized_to_512(vit_b_checkpoint: str) -> None:
    sam = build_sam("vit_b", image_size=512)
    report = load_sam_checkpoint(sam, vit_b_checkpoint)
    assert report.missing == [] and report.unexpected == []
    # pos_embed and the rel-pos tables of the 4 global blocks (h and w) are resized; windowed ones are not.
    expected = {"image_encoder.pos_embed"} | {
        f"image_encoder.blocks.{i}.attn.rel_pos_{a}" for i in (2, 5, 8, 11) for a in "hw"
    }
    assert set(report.resized) == expected
    assert sam.image_encoder.pos_embed.shape == (1, 32, 32, 768)
    assert sam.image_encoder.blocks[2].attn.rel_pos_h.shape == (63, 64)
    assert sam.image_encoder.blocks[0].attn.rel_pos_h.shape == (27, 64)
    source = read_state_dict(vit_b_checkpoint)
    expected_pe = resize_pos_embed(source["image_encoder.pos_embed"], (32, 32))
    torch.testing.assert_close(sam.image_encoder.pos_embed.data, expected_pe)
    with torch.no_grad():
        assert sam.image_encoder(torch.randn(1, 3, 512, 512)).shape == (1, 256, 32, 32)


def test_resize_helpers_preserve_constant_fields() -> None:
    pe = torch.full((1, 64, 64, 8), 3.0)
    torch.testing.assert_close(resize_pos_embed(pe, (16, 16)), torch.full((1, 16, 16, 8), 3.0))
    ramp = torch.linspace(-1, 1, 127)[:, None].repeat(1, 4)
    small = resize_rel_pos(ramp, 31)
    assert small.shape == (31, 4)
    assert torch.all(small[1:, 0] > small[:-1, 0]), "a monotonic table stays monotonic"
    assert resize_rel_pos(ramp, 127) is ramp


def test_wrong_architecture_is_a_clear_error(tmp_path) -> None:
    # A ViT-H-shaped file (the encoder's first tensors are enough to identify it) into a ViT-B.
    with torch.device("meta"):
        vit_h = sam_model_registry["vit_h"]()
    subset = {
        k: torch.zeros(v.shape)
        for k, v in vit_h.state_dict().items()
        if k.startswith(("image_encoder.pos_embed", "image_encoder.patch_embed", "image_encoder.blocks.0."))
    }
    path = tmp_path / "sam_vit_h_subset.pth"
    torch.save(subset, path)
    with pytest.raises(CheckpointError, match=r"vit_h encoder \(width 1280.*vit_b encoder \(width 768"):
        build_sam("vit_b", image_size=256, checkpoint=path)


def test_missing_and_unexpected_keys(tmp_path) -> None:
    sam = build_sam("tiny", image_size=64)
    state = sam.state_dict()
    state.pop("mask_decoder.iou_token.weight")
    state["mask_decoder.extra_head.weight"] = torch.zeros(3)
    path = tmp_path / "partial.pth"
    torch.save({"model": state}, path)  # nested under "model", as training checkpoints often are
    with pytest.raises(CheckpointError, match="1 missing keys.*iou_token.*1 unexpected keys.*extra_head"):
        build_sam("tiny", image_size=64, checkpoint=path)
    report = load_sam_checkpoint(build_sam("tiny", image_size=64), path, strict=False)
    assert report.missing == ["mask_decoder.iou_token.weight"]
    assert report.unexpected == ["mask_decoder.extra_head.weight"]


def test_wrapped_keys_are_mapped(tmp_path) -> None:
    sam = build_sam("tiny", image_size=64)
    path = tmp_path / "ddp.pth"
    torch.save({f"module.{k}": v for k, v in sam.state_dict().items()}, path)
    other = build_sam("tiny", image_size=64, checkpoint=path)
    for k, v in sam.state_dict().items():
        assert torch.equal(v, other.state_dict()[k])


def test_missing_and_corrupt_files(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint file not found: '.*nowhere.pth'"):
        build_sam("tiny", image_size=64, checkpoint=tmp_path / "nowhere.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"this is not a zip archive" * 10)
    with pytest.raises(CheckpointError, match="corrupt.pth' is not a readable PyTorch checkpoint"):
        build_sam("tiny", image_size=64, checkpoint=corrupt)
    not_tensors = tmp_path / "config.pth"
    torch.save({"lr": 0.1, "epochs": 3}, not_tensors)
    with pytest.raises(CheckpointError, match="does not hold a state dict of tensors"):
        read_state_dict(not_tensors)
