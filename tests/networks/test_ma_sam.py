# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import pytest
import torch
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot
from torch import nn

from masksam.adapters import FacTFactors, FacTQKV, SliceConvAdapter3D
from masksam.backbones import AdaptedViTBlock, build_encoder3d, build_sam
from masksam.engines.weights import check_state_dict
from masksam.networks import MASAM, build_ma_sam, progressive_upscaling

TINY = {"backbone": "tiny", "image_size": 64, "fact_rank": 4, "adapter_dim": 16}


def tiny_ma_sam(num_classes: int = 3, num_slices: int = 5, **kw) -> MASAM:
    return build_ma_sam(**{**TINY, **kw}, num_classes=num_classes, num_slices=num_slices)


def randomise(module: nn.Module) -> None:
    """Give the zero-initialised adapter projections random weights (a trained state)."""
    torch.manual_seed(1)
    for m in module.modules():
        if isinstance(m, (SliceConvAdapter3D,)):
            nn.init.normal_(m.up.weight, std=0.2)
        if isinstance(m, FacTFactors):
            nn.init.normal_(m.v.weight, std=0.2)


@pytest.mark.parametrize(("backbone", "size", "stride"), [("tiny", 64, 16), ("lite_medsam", 64, 4)])
def test_semantic_logits_at_the_input_size(backbone: str, size: int, stride: int) -> None:
    model = build_ma_sam(backbone, image_size=size, num_classes=4, num_slices=3, fact_rank=4, adapter_dim=16)
    assert model.encoder.feature_strides[-1] == stride
    out = model(torch.randn(2, 1, size, size, 3))
    assert out.shape == (2, 4, size, size, 3)


def test_progressive_upscaling_keeps_sams_first_stages_and_reaches_the_input_size() -> None:
    sam = build_sam("tiny", image_size=64)
    up = progressive_upscaling(sam.mask_decoder.output_upscaling, 4)
    convs = [m for m in up if isinstance(m, nn.ConvTranspose2d)]
    assert [c.out_channels for c in convs] == [16, 8, 4, 2]  # C/4 ... C/32 for C = 64
    assert convs[0] is sam.mask_decoder.output_upscaling[0] and convs[1] is sam.mask_decoder.output_upscaling[3]
    assert up(torch.randn(1, 64, 4, 4)).shape == (1, 2, 64, 64)
    assert progressive_upscaling(sam.mask_decoder.output_upscaling, 2) is sam.mask_decoder.output_upscaling
    with pytest.raises(ValueError, match="at least"):
        progressive_upscaling(sam.mask_decoder.output_upscaling, 1)


def test_adapters_start_as_the_identity_of_the_frozen_encoder() -> None:
    torch.manual_seed(0)
    model = tiny_ma_sam().eval()
    plain = build_encoder3d(build_sam("tiny", image_size=64).image_encoder).eval()
    plain.load_state_dict({k: v for k, v in model.encoder.state_dict().items() if k in plain.state_dict()}, strict=True)
    x = torch.rand(10, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.encoder(x, 5)[-1], plain(x, 5)[-1])


def test_what_trains_is_chosen_by_module_type() -> None:
    model = tiny_ma_sam()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    adapters = [m for m in model.modules() if isinstance(m, (SliceConvAdapter3D, FacTQKV, FacTFactors))]
    assert len([m for m in adapters if isinstance(m, SliceConvAdapter3D)]) == 2 * 4  # two per block
    assert all(p.requires_grad for m in adapters for p in m.parameters())
    frozen_sam = [n for n in trainable if n.startswith("encoder.") and ".adapters." not in n]
    assert frozen_sam == []
    assert {n for n in trainable if n.startswith("prompt_encoder.")} == {"prompt_encoder.no_mask_embed.weight"}
    assert all(p.requires_grad for p in model.decoder.parameters())  # the decoder is fine-tuned entirely
    assert all(p.requires_grad for p in model.input_projection.parameters())


def test_every_trainable_parameter_gets_a_gradient() -> None:
    """DDP without find_unused_parameters needs it: nothing marked trainable may be left out of the graph."""
    model = tiny_ma_sam()
    randomise(model)
    model(torch.randn(1, 1, 64, 64, 5)).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def test_removing_one_blocks_3d_adapters_removes_that_blocks_cross_slice_dependence() -> None:
    model = tiny_ma_sam().eval()
    randomise(model)
    blocks = [m for m in model.encoder.modules() if isinstance(m, AdaptedViTBlock)]
    num_slices, t = 5, 2

    def mixes(block: AdaptedViTBlock) -> bool:
        torch.manual_seed(2)
        x = torch.randn(num_slices, 4, 4, 32)
        y = x.clone()
        y[t] += torch.randn(4, 4, 32)
        with torch.no_grad():
            diff = (block(x, num_slices) - block(y, num_slices)).abs()
        return bool(diff[[t - 1, t + 1]].amax() > 1e-6)

    assert all(mixes(b) for b in blocks)
    for i, block in enumerate(blocks):
        saved = block.adapters.pre_attn, block.adapters.pre_mlp
        block.adapters.pre_attn = block.adapters.pre_mlp = None
        assert not mixes(block), f"block {i} mixes slices without its 3D adapters"
        assert all(mixes(b) for j, b in enumerate(blocks) if j != i)
        block.adapters.pre_attn, block.adapters.pre_mlp = saved


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    torch.manual_seed(0)
    model = tiny_ma_sam()
    randomise(model)
    model.eval()  # no dropout: both passes must compute the same function
    x = torch.randn(1, 1, 64, 64, 5)
    grads = []
    for enabled in (False, True):
        model.zero_grad()
        model.set_gradient_checkpointing(enabled)
        model(x).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, msg=name)


def test_wrong_input_is_named() -> None:
    model = tiny_ma_sam()
    with pytest.raises(ValueError, match="64x64x5"):
        model(torch.randn(1, 1, 64, 64, 4))
    with pytest.raises(ValueError, match="1-channel"):
        model(torch.randn(1, 2, 64, 64, 5))
    with pytest.raises(ValueError, match=r"\(B, C, H, W, D\)"):
        model(torch.randn(1, 64, 64, 5))


def test_multichannel_input_starts_as_the_channel_mean() -> None:
    torch.manual_seed(0)
    one, two = tiny_ma_sam().eval(), tiny_ma_sam(in_channels=2).eval()
    two.load_state_dict({k: v for k, v in one.state_dict().items() if "input_projection" not in k}, strict=False)
    x = torch.randn(1, 1, 64, 64, 5)
    with torch.no_grad():
        torch.testing.assert_close(two(torch.cat([x - 0.5, x + 0.5], dim=1)), one(x), atol=1e-4, rtol=1e-4)


def test_build_settings_travel_with_the_weights() -> None:
    state = tiny_ma_sam(num_classes=3).state_dict()
    check_state_dict(tiny_ma_sam(num_classes=3), state, "model.pt")
    with pytest.raises(ValueError, match="num_classes=3.*has 4"):
        check_state_dict(tiny_ma_sam(num_classes=4), state, "model.pt")
    with pytest.raises(ValueError, match="num_slices"):
        check_state_dict(tiny_ma_sam(num_slices=3), state, "model.pt")


def test_a_tiny_ma_sam_overfits_a_synthetic_volume() -> None:
    """0.2 CE + 0.8 Dice (the paper's loss) on one 5-slice stack: the foreground Dice passes 0.9."""
    torch.manual_seed(0)
    size, depth = 64, 5
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    label = torch.zeros(1, 1, size, size, depth)
    for d in range(depth):
        label[0, 0][((yy - 30) ** 2 + (xx - 34) ** 2) < (10 + 2 * d) ** 2, d] = 1
        label[0, 0][(yy > 48) & (xx > 8 + 4 * d) & (xx < 30 + 4 * d), d] = 2
    image = label / 2 + 0.05 * torch.randn(label.shape)
    model = tiny_ma_sam(fact_dropout=0.0)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.8, lambda_ce=0.2, batch=True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3, weight_decay=0.0)
    for _ in range(120):
        optimizer.zero_grad()
        loss = loss_fn(model(image), label)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        pred = model.eval()(image).argmax(1, keepdim=True)
    dice = DiceMetric(include_background=False)(one_hot(pred, 3), one_hot(label.long(), 3))
    assert dice.mean() > 0.9, dice
