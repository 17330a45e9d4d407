# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import datetime
import math
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from masksam.losses import HungarianMatcher, SetCriterion, slice_targets

K = 4  # classes incl. background
Q = 6  # queries
SIZE = 16
MAIN_TERMS = {"loss_ce", "loss_mask", "loss_dice", "loss_aux_mask", "loss_aux_dice", "loss_box_l1", "loss_giou"}


def _label_map() -> torch.Tensor:
    """Two slices (B=1, D=2): slice 0 holds classes {0, 1, 3}, slice 1 holds {0, 2}."""
    label = torch.zeros(2, SIZE, SIZE, dtype=torch.int64)
    label[0, 2:9, 3:12] = 1
    label[0, 11:15, 1:6] = 3
    label[1, 5:13, 6:14] = 2
    return label


def _random_outputs(num_slices: int, seed: int, num_aux: int = 2, mask_size: int = SIZE) -> dict:
    gen = torch.Generator().manual_seed(seed)
    x1y1 = torch.rand(num_slices, Q, 2, generator=gen) * 0.5
    outputs = {
        "pred_logits": torch.randn(num_slices, Q, K + 1, generator=gen),
        "pred_masks": torch.randn(num_slices, Q, mask_size, mask_size, generator=gen),
        "aux_masks": torch.randn(num_slices, Q, mask_size // 2, mask_size // 2, generator=gen),
        "aux_boxes": torch.cat([x1y1, x1y1 + 0.1 + 0.4 * torch.rand(num_slices, Q, 2, generator=gen)], dim=-1),
        "aux_outputs": [
            {
                "pred_logits": torch.randn(num_slices, Q, K + 1, generator=gen),
                "pred_masks": torch.randn(num_slices, Q, mask_size, mask_size, generator=gen),
            }
            for _ in range(num_aux)
        ],
    }
    return outputs


def _leaves(outputs: dict) -> dict[str, torch.Tensor]:
    leaves = {k: v for k, v in outputs.items() if isinstance(v, torch.Tensor)}
    for i, aux in enumerate(outputs.get("aux_outputs", [])):
        leaves |= {f"{k}_{i}": v for k, v in aux.items()}
    return leaves


def _criterion(num_points: int = 64, **kwargs: float) -> SetCriterion:
    return SetCriterion(num_classes=K, matcher=HungarianMatcher(num_points=num_points), num_points=num_points, **kwargs)


def test_terms_finite_and_total_is_sum() -> None:
    torch.manual_seed(0)
    outputs = _random_outputs(2, seed=0)
    losses = _criterion()(outputs, slice_targets(_label_map(), K))
    aux_terms = {f"{name}_{i}" for i in range(2) for name in ("loss_ce", "loss_mask", "loss_dice")}
    assert set(losses) == MAIN_TERMS | aux_terms | {"total"}
    for name, value in losses.items():
        assert value.ndim == 0 and value.dtype == torch.float32 and torch.isfinite(value), name
    parts = sum(v for k, v in losses.items() if k != "total")
    torch.testing.assert_close(losses["total"], parts)
    assert float(losses["total"]) > 0


def test_gradients_reach_every_output() -> None:
    torch.manual_seed(0)
    outputs = _random_outputs(2, seed=1, mask_size=8)  # masks at half the label resolution
    for value in _leaves(outputs).values():
        value.requires_grad_(True)
    losses = _criterion()(outputs, slice_targets(_label_map(), K))
    leaves = _leaves(outputs)
    # Every term reaches the output it supervises.
    sources = {
        "loss_ce": "pred_logits",
        "loss_mask": "pred_masks",
        "loss_dice": "pred_masks",
        "loss_aux_mask": "aux_masks",
        "loss_aux_dice": "aux_masks",
        "loss_box_l1": "aux_boxes",
        "loss_giou": "aux_boxes",
    }
    for i in range(2):
        sources |= {
            f"loss_ce_{i}": f"pred_logits_{i}",
            f"loss_mask_{i}": f"pred_masks_{i}",
            f"loss_dice_{i}": f"pred_masks_{i}",
        }
    for term, source in sources.items():
        (grad,) = torch.autograd.grad(losses[term], leaves[source], retain_graph=True)
        assert float(grad.abs().sum()) > 0, term
    losses["total"].backward()
    for name, value in leaves.items():
        assert value.grad is not None, name
        assert float(value.grad.abs().sum()) > 0, name


def _perfect_outputs(label: torch.Tensor) -> dict:
    targets = slice_targets(label, K)
    n = label.shape[0]
    outputs = {
        "pred_logits": torch.full((n, Q, K + 1), -20.0),
        "pred_masks": torch.full((n, Q, SIZE, SIZE), -20.0),
        "aux_masks": torch.full((n, Q, SIZE, SIZE), -20.0),
        "aux_boxes": torch.tensor([0.0, 0.0, 0.5, 0.5]).repeat(n, Q, 1),
    }
    outputs["pred_logits"][..., K] = 20.0  # every query predicts no-object ...
    for s, target in enumerate(targets):
        for m, (cls, mask, box) in enumerate(zip(target["labels"], target["masks"], target["boxes"], strict=True)):
            q = Q - 1 - m  # ... except one query per target
            outputs["pred_logits"][s, q] = -20.0
            outputs["pred_logits"][s, q, cls] = 20.0
            outputs["pred_masks"][s, q] = 20.0 * (2 * mask - 1)
            outputs["aux_masks"][s, q] = 20.0 * (2 * mask - 1)
            outputs["aux_boxes"][s, q] = box
    outputs["aux_outputs"] = [
        {"pred_logits": outputs["pred_logits"].clone(), "pred_masks": outputs["pred_masks"].clone()}
    ]
    return outputs


@pytest.mark.parametrize("num_points", [0, 256])
def test_perfect_prediction_beats_random(num_points: int) -> None:
    torch.manual_seed(0)
    label = _label_map()
    targets = slice_targets(label, K)
    criterion = _criterion(num_points=num_points)
    perfect = criterion(_perfect_outputs(label), targets)
    random = criterion(_random_outputs(2, seed=3, num_aux=1), targets)
    assert float(random["total"]) > 1.0
    assert float(perfect["total"]) < 0.1 * float(random["total"])
    assert float(perfect["loss_ce"]) < 1e-6  # unmatched queries are trained towards no-object
    assert float(perfect["loss_box_l1"]) < 1e-6 and float(perfect["loss_giou"]) < 1e-6
    if num_points <= 0:
        assert float(perfect["total"]) < 1e-3


def test_empty_weight_buffer() -> None:
    criterion = _criterion(eos_coef=0.25)
    assert "empty_weight" in dict(criterion.named_buffers())
    torch.testing.assert_close(criterion.empty_weight, torch.tensor([1.0, 1.0, 1.0, 1.0, 0.25]))
    assert "empty_weight" in criterion.state_dict()


def test_aux_mask_losses_apply_one_sigmoid() -> None:
    label = _label_map()
    targets = slice_targets(label, K)
    outputs = _random_outputs(2, seed=4, num_aux=0)
    outputs["aux_masks"] = torch.randn(2, Q, SIZE, SIZE) * 3
    criterion = _criterion(num_points=0, weight_aux_mask=1.0, weight_aux_dice=1.0)
    losses = criterion(outputs, targets)
    indices = criterion.matcher(outputs, targets)
    num_masks = sum(len(t["labels"]) for t in targets)
    bce, dice = 0.0, 0.0
    for s, (rows, cols) in enumerate(indices):
        for q, m in zip(rows.tolist(), cols.tolist(), strict=True):
            logits, mask = outputs["aux_masks"][s, q], targets[s]["masks"][m]
            bce += float(F.binary_cross_entropy_with_logits(logits, mask))
            prob = torch.sigmoid(logits)
            dice += 1.0 - float((2 * (prob * mask).sum() + 1) / (prob.sum() + mask.sum() + 1))
    assert math.isclose(float(losses["loss_aux_mask"]), bce / num_masks, rel_tol=1e-5)
    assert math.isclose(float(losses["loss_aux_dice"]), dice / num_masks, rel_tol=1e-5)
    # Feeding probabilities instead of logits is a different loss (the sigmoid is applied inside once).
    squashed = dict(outputs) | {"aux_masks": outputs["aux_masks"].sigmoid()}
    assert not math.isclose(float(criterion(squashed, targets)["loss_aux_mask"]), bce / num_masks, rel_tol=1e-2)


def test_weights_are_applied_inside() -> None:
    targets = slice_targets(_label_map(), K)
    outputs = _random_outputs(2, seed=5, num_aux=1)
    base = _criterion(num_points=0)(outputs, targets)
    weighted = _criterion(num_points=0, weight_mask=2.4, weight_giou=0.0)(outputs, targets)
    torch.testing.assert_close(weighted["loss_mask"], 2 * base["loss_mask"])
    torch.testing.assert_close(weighted["loss_mask_0"], 2 * base["loss_mask_0"])
    assert float(weighted["loss_giou"]) == 0.0
    torch.testing.assert_close(weighted["loss_dice"], base["loss_dice"])


def test_autocast_and_half_inputs_give_float32_losses() -> None:
    targets = slice_targets(_label_map(), K)
    outputs = _random_outputs(2, seed=6, num_aux=1)
    criterion = _criterion(num_points=0)
    reference = criterion(outputs, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = criterion(outputs, targets)
    for name in reference:
        assert autocast[name].dtype == torch.float32
        torch.testing.assert_close(autocast[name], reference[name])
    half = {k: v.half() for k, v in outputs.items() if isinstance(v, torch.Tensor)}
    assert criterion(half, targets)["total"].dtype == torch.float32


def test_slices_without_targets_and_bad_inputs() -> None:
    label = _label_map()
    label[1] = 255
    targets = slice_targets(label, K, ignore_index=255)
    assert len(targets[1]["labels"]) == 0
    outputs = _random_outputs(2, seed=7, num_aux=1)
    losses = _criterion()(outputs, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    none = slice_targets(torch.full((2, SIZE, SIZE), 255), K, ignore_index=255)
    outputs["pred_masks"].requires_grad_(True)
    losses = _criterion()(outputs, none)
    assert float(losses["loss_mask"].detach()) == 0.0 and float(losses["loss_ce"].detach()) > 0
    losses["total"].backward()
    assert outputs["pred_masks"].grad is not None
    with pytest.raises(ValueError, match="-0.5"):
        _criterion(eos_coef=-0.5)
    with pytest.raises(ValueError, match=r"\(2, 6, 4\)"):
        _criterion()(outputs | {"pred_logits": torch.zeros(2, Q, K)}, targets)
    with pytest.raises(ValueError, match="pred_masks"):
        _criterion()({"pred_logits": outputs["pred_logits"]}, targets)


# --------------------------------------------------------------------------------------------- DDP
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _distributed_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=60),
    )
    label = _label_map()[:1].clone()  # one slice, classes {0, 1, 3}: 3 targets
    label[0, 11:15, 1:6] = 0 if rank == 0 else 3  # rank 0: {0, 1} = 2 targets
    if rank == 1:
        label[0, 0:2, 12:16] = 2  # rank 1: {0, 1, 2, 3} = 4 targets
    targets = slice_targets(label, K)
    outputs = _random_outputs(1, seed=10 + rank, num_aux=1)
    criterion = _criterion(num_points=0)
    try:
        num_masks = criterion.num_masks(targets, torch.device("cpu"))
        synced = {k: float(v) for k, v in criterion(outputs, targets).items()}
        dist.barrier()
    finally:
        dist.destroy_process_group()
    local = {k: float(v) for k, v in criterion(outputs, targets).items()}
    torch.save(
        {"num_masks": num_masks, "count": len(targets[0]["labels"]), "synced": synced, "local": local},
        Path(out_dir) / f"rank{rank}.pt",
    )


def test_num_masks_is_averaged_across_ranks(tmp_path: Path) -> None:
    world_size = 2
    context = mp.spawn(
        _distributed_worker, args=(world_size, _free_port(), str(tmp_path)), nprocs=world_size, join=False
    )
    deadline = time.monotonic() + 120
    while not context.join(timeout=2):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.terminate()
            pytest.fail("distributed workers did not finish within 120 s")
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world_size)]
    assert [r["count"] for r in results] == [2, 4]
    for result in results:
        assert result["num_masks"] == 3.0
        ratio = result["count"] / 3.0  # synced loss = local sum / 3, local loss = local sum / count
        for name in (
            "loss_mask",
            "loss_dice",
            "loss_aux_mask",
            "loss_aux_dice",
            "loss_box_l1",
            "loss_giou",
            "loss_mask_0",
        ):
            assert math.isclose(result["synced"][name], result["local"][name] * ratio, rel_tol=1e-5), name
        assert math.isclose(result["synced"]["loss_ce"], result["local"]["loss_ce"], rel_tol=1e-6)


def test_volume_loss_wrapper_builds_targets_and_keeps_terms() -> None:
    from masksam.losses import MaskClassificationLoss, slice_targets, volume_to_slices

    torch.manual_seed(0)
    label = torch.zeros(1, 1, 8, 8, 2, dtype=torch.long)
    label[0, 0, 2:5, 3:6, 1] = 2
    outputs = {"pred_logits": torch.randn(2, 3, 4), "pred_masks": torch.randn(2, 3, 8, 8)}
    criterion = SetCriterion(3, HungarianMatcher(num_points=-1), num_points=-1)
    wrapper = MaskClassificationLoss(criterion)
    total = wrapper(outputs, label)
    expected = criterion(outputs, slice_targets(volume_to_slices(label), 3))
    torch.testing.assert_close(total, expected["total"])
    assert set(wrapper.last_terms) == set(expected) and wrapper.last_terms["total"] == pytest.approx(float(total))
    bad = label.clone()
    bad[0, 0, 0, 0, 0] = 7
    with pytest.raises(ValueError, match="7"):
        wrapper(outputs, bad)
