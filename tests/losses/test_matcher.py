# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from masksam.losses import HungarianMatcher, masks_to_boxes_normalized

WEIGHTS = {
    "cost_class": 0.2,
    "cost_mask": 1.2,
    "cost_dice": 1.2,
    "cost_aux_mask": 0.5,
    "cost_box_l1": 0.5,
    "cost_giou": 0.2,
}
NUM_CLASSES = 5  # K incl. background; heads have K + 1 outputs


def _random_problem(seed: int, num_queries: int, num_targets: list[int], size: int = 8) -> tuple[dict, list[dict]]:
    gen = torch.Generator().manual_seed(seed)
    n = len(num_targets)
    x1y1 = torch.rand(n, num_queries, 2, generator=gen) * 0.5
    outputs = {
        "pred_logits": torch.randn(n, num_queries, NUM_CLASSES + 1, generator=gen) * 2,
        "pred_masks": torch.randn(n, num_queries, size, size, generator=gen) * 3,
        "aux_masks": torch.randn(n, num_queries, size, size, generator=gen) * 3,
        "aux_boxes": torch.cat([x1y1, x1y1 + 0.05 + torch.rand(n, num_queries, 2, generator=gen) * 0.45], dim=-1),
    }
    targets = []
    for m in num_targets:
        masks = (torch.rand(m, size, size, generator=gen) > 0.6).float()
        masks[:, 0, 0] = 1.0  # never empty
        labels = torch.randperm(NUM_CLASSES, generator=gen)[:m]
        targets.append({"labels": labels, "masks": masks, "boxes": masks_to_boxes_normalized(masks)})
    return outputs, targets


def _giou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (hull - union) / hull


def _bce_dice(logits: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    x, t = logits.double().flatten(), target.double().flatten()
    bce = float((x.clamp(min=0) - x * t + torch.log1p(torch.exp(-x.abs()))).mean())
    s = torch.sigmoid(x)
    dice = 1.0 - float((2 * (s * t).sum() + 1) / (s.sum() + t.sum() + 1))
    return bce, dice


def _reference_cost(outputs: dict, target: dict, n: int, weights: dict[str, float]) -> torch.Tensor:
    """Pair-by-pair float64 cost, written independently of the matcher."""
    q_count, m_count = outputs["pred_logits"].shape[1], len(target["labels"])
    cost = torch.zeros(q_count, m_count, dtype=torch.float64)
    for q in range(q_count):
        probs = torch.softmax(outputs["pred_logits"][n, q].double(), dim=0)
        for m in range(m_count):
            c = -weights["cost_class"] * float(probs[int(target["labels"][m])])
            if "pred_masks" in outputs:
                bce, dice = _bce_dice(outputs["pred_masks"][n, q], target["masks"][m])
                c += weights["cost_mask"] * bce + weights["cost_dice"] * dice
            if "aux_masks" in outputs:
                bce, dice = _bce_dice(outputs["aux_masks"][n, q], target["masks"][m])
                c += weights["cost_aux_mask"] * (bce + dice)
            if "aux_boxes" in outputs:
                a = outputs["aux_boxes"][n, q].double().tolist()
                b = target["boxes"][m].double().tolist()
                c += weights["cost_box_l1"] * sum(abs(u - v) for u, v in zip(a, b, strict=True))
                c -= weights["cost_giou"] * _giou(a, b)
            cost[q, m] = c
    return cost


def _brute_force_minimum(cost: torch.Tensor) -> float:
    q_count, m_count = cost.shape
    if q_count >= m_count:
        return min(
            sum(float(cost[p[m], m]) for m in range(m_count)) for p in itertools.permutations(range(q_count), m_count)
        )
    return min(
        sum(float(cost[q, p[q]]) for q in range(q_count)) for p in itertools.permutations(range(m_count), q_count)
    )


def _check_optimal(
    indices: list[tuple[torch.Tensor, torch.Tensor]], outputs: dict, targets: list[dict], weights: dict[str, float]
) -> None:
    for n, ((rows, cols), target) in enumerate(zip(indices, targets, strict=True)):
        num_queries, num_targets = outputs["pred_logits"].shape[1], len(target["labels"])
        assert rows.dtype == torch.int64 and cols.dtype == torch.int64
        assert len(rows) == len(cols) == min(num_queries, num_targets)
        assert len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)
        cost = _reference_cost(outputs, target, n, weights)
        matched = float(cost[rows, cols].sum())
        assert math.isclose(matched, _brute_force_minimum(cost), rel_tol=1e-5, abs_tol=1e-4)


@pytest.mark.parametrize("seed", range(4))
def test_matching_is_optimal(seed: int) -> None:
    gen = torch.Generator().manual_seed(100 + seed)
    num_queries = 4 + seed % 2
    num_targets = torch.randint(1, 5, (3,), generator=gen).tolist()
    outputs, targets = _random_problem(seed, num_queries, num_targets)
    indices = HungarianMatcher(num_points=0, **WEIGHTS)(outputs, targets)
    _check_optimal(indices, outputs, targets, WEIGHTS)


def test_matching_with_more_targets_than_queries() -> None:
    outputs, targets = _random_problem(7, num_queries=2, num_targets=[3, 4])
    indices = HungarianMatcher(num_points=0, **WEIGHTS)(outputs, targets)
    _check_optimal(indices, outputs, targets, WEIGHTS)


def test_missing_keys_and_zero_weights_skip_terms() -> None:
    outputs, targets = _random_problem(11, num_queries=5, num_targets=[3, 2])
    class_only = {"pred_logits": outputs["pred_logits"]}
    weights = dict.fromkeys(WEIGHTS, 0.0) | {"cost_class": 1.0}
    _check_optimal(HungarianMatcher(num_points=0, **WEIGHTS)(class_only, targets), class_only, targets, weights)
    # A zero weight must skip its term entirely: non-finite logits would otherwise poison the costs.
    poisoned = dict(outputs) | {"pred_logits": torch.full_like(outputs["pred_logits"], float("nan"))}
    no_class = WEIGHTS | {"cost_class": 0.0}
    indices = HungarianMatcher(num_points=0, **no_class)(poisoned, targets)
    _check_optimal(indices, outputs, targets, no_class)
    with pytest.raises(ValueError, match="not finite"):
        HungarianMatcher(num_points=0, **WEIGHTS)(poisoned, targets)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_match_in_float32(dtype: torch.dtype) -> None:
    outputs, targets = _random_problem(5, num_queries=5, num_targets=[4, 3, 1])
    low = {k: v.to(dtype) for k, v in outputs.items()}
    upcast = {k: v.float() for k, v in low.items()}
    matcher = HungarianMatcher(num_points=0, **WEIGHTS)
    got = matcher(low, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got_autocast = matcher(upcast, targets)
    reference = matcher(upcast, targets)
    for (r1, c1), (r2, c2), (r3, c3) in zip(got, got_autocast, reference, strict=True):
        assert torch.equal(r1, r3) and torch.equal(c1, c3)
        assert torch.equal(r2, r3) and torch.equal(c2, c3)
    _check_optimal(got, upcast, targets, WEIGHTS)
    expected = matcher.cost_matrix(upcast, targets[0], 0)
    assert expected.dtype == torch.float32
    torch.testing.assert_close(matcher.cost_matrix(low, targets[0], 0), expected, rtol=1e-6, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(matcher.cost_matrix(upcast, targets[0], 0), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("num_points", [0, 256])
def test_lower_resolution_predictions_recover_permutation(num_points: int) -> None:
    size = 16
    label = torch.zeros(size, size, dtype=torch.int64)
    label[2:8, 2:10] = 1
    label[9:15, 4:14] = 2
    label[0:6, 11:16] = 3
    masks = torch.stack([(label == k).float() for k in range(4)])
    targets = [{"labels": torch.arange(4), "masks": masks, "boxes": masks_to_boxes_normalized(masks)}]
    perm = torch.tensor([3, 0, 4, 1])  # query perm[m] predicts target m; query 2 predicts nothing
    small = F.avg_pool2d(masks[:, None], 2)[:, 0]  # (4, 8, 8): half resolution
    pred_masks = torch.full((1, 5, size // 2, size // 2), -10.0)
    pred_masks[0, perm] = 20.0 * (small - 0.5)
    outputs = {"pred_masks": pred_masks, "aux_masks": pred_masks[:, :, ::2, ::2].clone()}
    torch.manual_seed(0)
    rows, cols = HungarianMatcher(cost_class=0.0, cost_box_l1=0.0, cost_giou=0.0, num_points=num_points)(
        outputs, targets
    )[0]
    assert torch.equal(rows[torch.argsort(cols)], perm)


def test_slices_without_targets() -> None:
    outputs, targets = _random_problem(2, num_queries=4, num_targets=[2, 1])
    targets[1] = {
        "labels": torch.zeros(0, dtype=torch.int64),
        "masks": torch.zeros(0, 8, 8),
        "boxes": torch.zeros(0, 4),
    }
    indices = HungarianMatcher(num_points=0)(outputs, targets)
    assert len(indices[0][0]) == 2
    assert indices[1][0].numel() == 0 and indices[1][1].numel() == 0
    assert indices[1][0].dtype == torch.int64


def test_matcher_has_no_gradient_and_validates() -> None:
    outputs, targets = _random_problem(3, num_queries=4, num_targets=[2])
    outputs = {k: v.requires_grad_(True) for k, v in outputs.items()}
    rows, cols = HungarianMatcher()(outputs, targets)[0]
    assert not rows.requires_grad and not cols.requires_grad
    with pytest.raises(ValueError, match="-1"):
        HungarianMatcher(cost_mask=-1.0)
    with pytest.raises(ValueError, match="at least one"):
        HungarianMatcher(**dict.fromkeys(WEIGHTS, 0.0))
    with pytest.raises(ValueError, match="2 targets for 1 slices"):
        HungarianMatcher()(outputs, targets * 2)
