# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import pytest
import torch

from masksam.inferers import IterativeClickInferer, PromptedInferer, PromptedVolumePredictor
from masksam.networks import NO_PROMPT_LOGIT, build_med_sa
from tests.networks.test_med_sa import SIZE, box_prompts, randomise


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_med_sa("tiny", image_size=SIZE, num_slices=3, decoder_adapter_dim=16).eval()
    randomise(net)
    return net


def _count_calls(module: torch.nn.Module) -> list[int]:
    calls: list[int] = []
    module.register_forward_hook(lambda m, args, out: calls.append(1))
    return calls


def _prompts(depth: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lo = torch.randint(0, 30, (depth, 2), generator=g).float()
    return box_prompts(torch.cat([lo, lo + 20], dim=1))


def test_second_prompt_runs_the_decoder_only_and_equals_a_fresh_full_call(model) -> None:
    volume = torch.rand(1, SIZE, SIZE, 7)  # 7 slices: stacks of 3, the last completed by repeating slice 6
    predictor = PromptedVolumePredictor(model)
    encoder_calls = _count_calls(model.encoder)
    predictor.set_volume(volume)
    assert len(encoder_calls) == 3
    first = predictor.predict(*_prompts(7, 0))
    second = predictor.predict(*_prompts(7, 1))
    assert len(encoder_calls) == 3, "a new prompt must not run the encoder again"
    assert first.shape == second.shape == (1, SIZE, SIZE, 7)
    assert not torch.allclose(first, second)
    padded = torch.cat([volume, volume[..., -1:], volume[..., -1:]], dim=-1)
    coords, labels = _prompts(7, 1)
    coords = torch.cat([coords, torch.zeros(2, *coords.shape[1:])])
    labels = torch.cat([labels, torch.full((2, labels.shape[1]), -1)])
    with torch.no_grad():
        full = torch.cat(
            [model(padded[None, ..., i : i + 3], coords[None, i : i + 3], labels[None, i : i + 3]) for i in (0, 3, 6)],
            dim=-1,
        )
    torch.testing.assert_close(second, full[0, :, :, :, :7], atol=1e-5, rtol=1e-4)


def test_a_refining_click_uses_the_previous_mask_and_keeps_the_other_slices(model) -> None:
    volume = torch.rand(1, SIZE, SIZE, 3)
    predictor = PromptedVolumePredictor(model)
    predictor.set_volume(volume)
    coords, labels = _prompts(3, 0)
    first = predictor.predict(coords, labels)
    click = torch.full((3, 3), -1)
    click[1, 0] = 0  # a background click on slice 1 only
    click_coords = torch.zeros(3, 3, 2)
    click_coords[1, 0] = torch.tensor([30.0, 30.0])
    refined = predictor.predict(click_coords, click, refine=True)
    torch.testing.assert_close(refined[..., [0, 2]], first[..., [0, 2]])  # untouched slices keep their masks
    fresh = PromptedVolumePredictor(model)
    fresh.set_volume(volume)
    alone = fresh.predict(click_coords, click)
    assert not torch.allclose(refined[..., 1], alone[..., 1], atol=1e-4), "the previous mask must be the dense prompt"
    assert torch.all(alone[..., 0] == NO_PROMPT_LOGIT)


def test_inferer_batches_volumes_and_names_misuse(model) -> None:
    x = torch.rand(2, 1, SIZE, SIZE, 3)
    coords, labels = _prompts(3, 0)
    coords, labels = coords[None].repeat(2, 1, 1, 1), labels[None].repeat(2, 1, 1)
    out = PromptedInferer()(x, model, prompt_coords=coords, prompt_labels=labels)
    with torch.no_grad():
        torch.testing.assert_close(out, model(x, coords, labels), atol=1e-5, rtol=1e-4)
    predictor = PromptedVolumePredictor(model)
    with pytest.raises(RuntimeError, match="set_volume"):
        predictor.predict(coords[0], labels[0])
    with pytest.raises(ValueError, match="model space"):
        predictor.set_volume(torch.rand(1, 32, 32, 3))
    predictor.set_volume(x[0])
    with pytest.raises(ValueError, match="3 slices"):
        predictor.predict(coords[0, :2], labels[0, :2])


def test_inferer_segments_several_structures_into_channels_and_a_label_map(model) -> None:
    x = torch.rand(1, 1, SIZE, SIZE, 3)
    (c1, l1), (c2, l2) = _prompts(3, 0), _prompts(3, 1)
    coords, labels = torch.stack([c1, c2])[None], torch.stack([l1, l2])[None]
    encoder_calls = _count_calls(model.encoder)
    out = PromptedInferer(background_logit=0.0)(x, model, prompt_coords=coords, prompt_labels=labels)
    assert len(encoder_calls) == 1, "one encoder pass for every structure of a volume"
    assert out.shape == (1, 3, SIZE, SIZE, 3) and torch.all(out[:, 0] == 0)
    with torch.no_grad():
        torch.testing.assert_close(out[:, 1:2], model(x, c1[None], l1[None]), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out[:, 2:3], model(x, c2[None], l2[None]), atol=1e-5, rtol=1e-4)
    label_map = out.argmax(1)
    assert torch.equal(label_map == 0, (out[:, 1:] <= 0).all(1))
    with pytest.raises(ValueError, match="3 slices"):
        PromptedInferer()(x, model, prompt_coords=coords[:, :, :2], prompt_labels=labels[:, :, :2])


def test_iterative_clicks_add_a_correction_and_the_previous_mask() -> None:
    torch.manual_seed(0)
    net = build_med_sa("tiny", image_size=SIZE, num_slices=2, decoder_adapter_dim=16)
    randomise(net)
    x = torch.rand(1, 1, SIZE, SIZE, 2)
    target = torch.zeros(1, 1, SIZE, SIZE, 2)
    target[..., 10:30, 12:40, :] = 1
    coords, labels = box_prompts(torch.tensor([[10.0, 12.0, 29.0, 39.0]] * 2))
    coords, labels = coords[None], labels[None]
    seen: list[tuple] = []
    hook = net.register_forward_pre_hook(lambda m, args: seen.append((args[1].shape, args[3] is not None)))
    out = IterativeClickInferer(correction_clicks=2)(x, net, coords, labels, target)
    assert [s for s, _ in seen] == [(1, 2, 3, 2), (1, 2, 4, 2), (1, 2, 5, 2)], "one click per round"
    assert [m for _, m in seen] == [False, True, True], "rounds after the first get the previous mask"
    assert out.requires_grad and out.shape == (1, 1, SIZE, SIZE, 2)
    hook.remove()
    plain = IterativeClickInferer(correction_clicks=0)(x, net, coords, labels)
    with torch.no_grad():
        torch.testing.assert_close(plain, net(x, coords, labels))
    with pytest.raises(ValueError, match="target"):
        IterativeClickInferer(correction_clicks=1)(x, net, coords, labels)
