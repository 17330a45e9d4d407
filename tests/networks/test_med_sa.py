# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn

from masksam.adapters import BottleneckAdapter, HyperPromptingAdapter, SpaceDepthTranspose, count_parameters
from masksam.backbones import build_sam
from masksam.engines.weights import check_state_dict
from masksam.networks import NO_PROMPT_LOGIT, MedSA, build_med_sa, embed_sparse_prompts

SIZE = 64


def tiny_med_sa(num_slices: int = 4, **kw) -> MedSA:
    return build_med_sa("tiny", image_size=SIZE, num_slices=num_slices, decoder_adapter_dim=16, **kw)


def randomise(module: nn.Module, std: float = 0.2) -> None:
    """Give every zero-initialised adapter projection random weights (a trained state)."""
    torch.manual_seed(1)
    for m in module.modules():
        if isinstance(m, (BottleneckAdapter, HyperPromptingAdapter)):
            nn.init.normal_(m.up.weight, std=std)
        if isinstance(m, HyperPromptingAdapter):
            nn.init.normal_(m.hyper[-1].weight, std=std)


def box_prompts(boxes: torch.Tensor, num_points: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """``(D, 4)`` boxes ``(i0, j0, i1, j1)`` -> per-slice coords ``(D, P, 2)`` and labels ``(D, P)`` (one box, padding)."""
    d = boxes.shape[0]
    coords = torch.zeros(d, num_points, 2)
    coords[:, 0], coords[:, 1] = boxes[:, :2], boxes[:, 2:]
    labels = torch.full((d, num_points), -1, dtype=torch.long)
    labels[:, 0], labels[:, 1] = 2, 3
    return coords, labels


def test_sparse_embedding_equals_sams_prompt_encoder() -> None:
    pe = build_sam("tiny", image_size=SIZE).prompt_encoder
    points = torch.tensor([[[10.0, 20.0], [30.0, 5.0]]])
    point_labels = torch.tensor([[1, 0]])
    box = torch.tensor([[4.0, 6.0, 40.0, 50.0]])
    with torch.no_grad():
        sam_sparse, _ = pe(points=(points, point_labels), boxes=box, masks=None)
        ours = embed_sparse_prompts(pe, torch.cat([points, box.reshape(1, 2, 2)], 1), torch.tensor([[1, 0, 2, 3]]))
        torch.testing.assert_close(ours, sam_sparse)
        sam_sparse, _ = pe(points=(points, point_labels), boxes=None, masks=None)  # SAM pads with a not-a-point
        ours = embed_sparse_prompts(pe, torch.cat([points, torch.zeros(1, 1, 2)], 1), torch.tensor([[1, 0, -1]]))
        torch.testing.assert_close(ours, sam_sparse)
    with pytest.raises(ValueError, match="labels must be in -1..3"):
        embed_sparse_prompts(pe, points, torch.tensor([[1, 4]]))


def test_untrained_med_sa_is_exactly_its_sam() -> None:
    """Every adapter (encoder, Space-Depth Transpose, decoder, HyP) starts as a zero delta."""
    torch.manual_seed(0)
    model = tiny_med_sa().eval()
    torch.manual_seed(0)
    sam = build_sam("tiny", image_size=SIZE).eval()  # the same draws: build_med_sa builds its SAM first
    assert torch.equal(sam.mask_decoder.iou_token.weight, model.decoder.iou_token.weight)

    x = torch.rand(1, 1, SIZE, SIZE, 4)
    boxes = torch.tensor(
        [[8.0, 10.0, 40.0, 50.0], [5.0, 5.0, 30.0, 60.0], [0.0, 0.0, 63.0, 63.0], [20.0, 12.0, 33.0, 44.0]]
    )
    coords, labels = box_prompts(boxes)
    with torch.no_grad():
        ours = model(x, coords[None], labels[None])
        rgb = ((255 * x[0, 0].permute(2, 0, 1)[:, None].repeat(1, 3, 1, 1)) - sam.pixel_mean) / sam.pixel_std
        embeddings = sam.image_encoder(rgb)
        low = []
        for d in range(4):  # SAM decodes the prompts of one image at a time
            sparse, dense = sam.prompt_encoder(points=None, boxes=boxes[d : d + 1, [1, 0, 3, 2]], masks=None)  # (x, y)
            low.append(
                sam.mask_decoder(embeddings[d : d + 1], sam.prompt_encoder.get_dense_pe(), sparse, dense, False)[0]
            )
        theirs = F.interpolate(torch.cat(low), size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    torch.testing.assert_close(ours[0, 0], theirs[:, 0].permute(1, 2, 0), atol=1e-4, rtol=1e-4)


def test_hyper_prompting_adapter_is_identity_at_init_and_follows_the_prompt() -> None:
    torch.manual_seed(0)
    adapter = HyperPromptingAdapter(dim=32, hidden_dim=8)
    x, p1, p2 = torch.randn(3, 5, 32), torch.randn(3, 32), torch.randn(3, 32)
    assert torch.count_nonzero(adapter(x, 1, p1)) == 0  # a zero delta: SAM's decoder unchanged
    torch.testing.assert_close(adapter.weights(p1), torch.eye(8).expand(3, 8, 8))
    nn.init.normal_(adapter.up.weight, std=0.2)
    torch.testing.assert_close(adapter(x, 1, p1), adapter(x, 1, p2))  # W = I: not yet prompt-dependent
    nn.init.normal_(adapter.hyper[-1].weight, std=0.2)
    assert not torch.allclose(adapter(x, 1, p1), adapter(x, 1, p2), atol=1e-4)
    # The prompt modulates the down-projected tokens per problem: problem 0's output depends on its prompt only.
    p3 = p2.clone()
    p3[0] = p1[0]
    torch.testing.assert_close(adapter(x, 1, p3)[0], adapter(x, 1, p1)[0])
    with pytest.raises(ValueError, match="one prompt embedding"):
        adapter(x, 1, p1[:2])


def test_hyper_prompting_changes_the_decoded_mask_with_the_prompt() -> None:
    """Same image and same box: only the HyP-Adpt prompt path differs, and the mask follows it."""
    model = tiny_med_sa(num_slices=1).eval()
    randomise(model)
    x = torch.rand(1, 1, SIZE, SIZE, 1)
    coords, labels = box_prompts(torch.tensor([[8.0, 10.0, 40.0, 50.0]]))
    with torch.no_grad():
        embeddings = model.encode(x)
        base = model.decode(embeddings, coords, labels)
        hyp = model.decoder.transformer.layer_adapters[0].token_to_image
        saved = hyp.hyper[-1].weight.clone()
        nn.init.zeros_(hyp.hyper[-1].weight)
        without = model.decode(embeddings, coords, labels)
        hyp.hyper[-1].weight.copy_(saved)
    assert not torch.allclose(base, without, atol=1e-5)


def test_slices_without_a_prompt_are_background_and_not_decoded() -> None:
    model = tiny_med_sa().eval()
    calls: list[int] = []
    model.decoder.register_forward_hook(lambda m, args, out: calls.append(out.shape[0]))
    coords, labels = box_prompts(torch.tensor([[8.0, 10.0, 40.0, 50.0]] * 4))
    labels[1] = -1
    labels[3] = -1
    with torch.no_grad():
        out = model(torch.rand(1, 1, SIZE, SIZE, 4), coords[None], labels[None])
    assert calls == [2]
    assert torch.all(out[..., 1] == NO_PROMPT_LOGIT) and torch.all(out[..., 3] == NO_PROMPT_LOGIT)
    assert not torch.all(out[..., 0] == NO_PROMPT_LOGIT)


def test_space_depth_transpose_makes_slices_see_their_neighbours() -> None:
    model = tiny_med_sa().eval()
    randomise(model)
    for m in model.modules():
        if isinstance(m, SpaceDepthTranspose):
            nn.init.normal_(m.adapter.up.weight, std=0.2)
    x = torch.rand(1, 1, SIZE, SIZE, 4)
    y = x.clone()
    y[..., 3] = torch.rand(SIZE, SIZE)
    with torch.no_grad():
        assert not torch.allclose(model.encode(x)[0], model.encode(y)[0], atol=1e-5)
    flat = build_med_sa("tiny", image_size=SIZE, num_slices=4, depth_attention=False).eval()
    randomise(flat)
    with torch.no_grad():
        torch.testing.assert_close(flat.encode(x)[0], flat.encode(y)[0])


def test_only_adapters_train_unless_the_decoder_is_asked_for() -> None:
    model = tiny_med_sa()
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"encoder", "decoder"}
    assert not any(p.requires_grad for p in model.prompt_encoder.parameters())
    assert (
        not model.decoder.iou_token.weight.requires_grad
        and not model.decoder.hypernetwork.layers[0].weight.requires_grad
    )
    assert all(p.requires_grad for p in model.decoder.transformer.layer_adapters.parameters())
    full = tiny_med_sa(train_decoder=True)
    decoder_params = sum(p.numel() for p in full.decoder.parameters())
    assert count_parameters(full)[1] - count_parameters(model)[1] == decoder_params - sum(
        p.numel() for p in model.decoder.parameters() if p.requires_grad
    )


def test_a_tiny_med_sa_learns_a_prompted_square() -> None:
    torch.manual_seed(0)
    model = tiny_med_sa(num_slices=2, train_decoder=True)
    x = torch.zeros(2, 1, SIZE, SIZE, 2)
    target = torch.zeros(2, 1, SIZE, SIZE, 2)
    x[:, :, 16:40, 20:48] = 0.9
    target[:, :, 16:40, 20:48] = 1
    coords, labels = box_prompts(torch.tensor([[16.0, 20.0, 39.0, 47.0]] * 2))
    coords, labels = coords[None].expand(2, -1, -1, -1), labels[None].expand(2, -1, -1)
    loss_fn = DiceCELoss(sigmoid=True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(25):
        loss = loss_fn(model(x, coords, labels), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_checkpoints_record_build_settings_and_bad_inputs_are_clear() -> None:
    model = tiny_med_sa()
    other = build_med_sa("tiny", image_size=SIZE, num_slices=2, decoder_adapter_dim=16)
    with pytest.raises(ValueError, match="num_slices"):
        check_state_dict(other, model.state_dict(), "med_sa.pt")
    coords, labels = box_prompts(torch.tensor([[8.0, 10.0, 40.0, 50.0]] * 4))
    with pytest.raises(ValueError, match="stacks of 64x64x4"):
        model(torch.rand(1, 1, SIZE, SIZE, 3), coords[None, :3], labels[None, :3])
    with pytest.raises(ValueError, match=r"\(B, D, P, 2\)"):
        model(torch.rand(1, 1, SIZE, SIZE, 4), coords[None, :3], labels[None, :3])
