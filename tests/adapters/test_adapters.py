# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import pytest
import torch
from torch import nn

from masksam.adapters import (
    Adapter,
    DepthConvAdapter3D,
    DepthMLPAdapter3D,
    FacTFactors,
    FacTQKV,
    LoRAQKV,
    SliceDenseEmbedding,
    SliceEmbedding,
    count_parameters,
    depth_grid,
    fold_slices,
    ma_sam_block_adapters,
    mark_trainable,
    masksam_block_adapters,
    unfold_slices,
)
from masksam.backbones import build_encoder3d, build_sam


def _randomise_adapters(module: nn.Module) -> None:
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, Adapter):
                for p in m.parameters(recurse=False):
                    p.normal_(0, 0.3)
                for child in m.children():
                    if not isinstance(child, Adapter):
                        for p in child.parameters():
                            p.normal_(0, 0.3)


@pytest.fixture(scope="module")
def tiny_sam():
    return build_sam("tiny", image_size=64)


def test_fold_round_trip_and_errors() -> None:
    x = torch.randn(6, 4, 5, 7)
    u = unfold_slices(x, 3)
    assert u.shape == (2, 7, 3, 4, 5)
    assert torch.equal(u[1, :, 2], x[5].permute(2, 0, 1))
    assert torch.equal(fold_slices(u), x)
    with pytest.raises(ValueError, match="6 folded slices are not a whole number of stacks of num_slices=4"):
        unfold_slices(x, 4)


def test_depth_mlp_adapter() -> None:
    adapter = DepthMLPAdapter3D(dim=16, hidden_dim=8, num_slices=3)
    x = torch.randn(6, 10, 16)
    assert torch.count_nonzero(adapter(x, 3)) == 0
    _randomise_adapters(adapter)
    y = x.clone()
    y[1] += 1.0  # slice 1 of stack 0
    d = (adapter(x, 3) - adapter(y, 3)).abs().amax(dim=(1, 2))
    assert torch.all(d[:3] > 0) and torch.all(d[3:] == 0), "mixes within a stack, never across stacks"
    with pytest.raises(ValueError, match="built for 3 slices per stack, got 2"):
        adapter(x, 2)


def test_depth_conv_adapter_receptive_field() -> None:
    adapter = DepthConvAdapter3D(dim=8, hidden_dim=4)
    _randomise_adapters(adapter)
    x = torch.randn(5, 6, 6, 8)
    y = x.clone()
    y[0, 0, 0] += 1.0  # one token of slice 0
    d = (adapter(x, 5) - adapter(y, 5)).abs().amax(dim=-1)
    assert d[1, 1, 1] > 0 and d[1, 2, 2] == 0 and d[2].max() == 0, "3x3x3 neighbourhood only"


def test_low_rank_updates_touch_q_and_v_only() -> None:
    factors = FacTFactors(dim=12, rank=4)
    for update in (LoRAQKV(12, rank=2), FacTQKV(factors, dropout=0.0)):
        x = torch.randn(3, 12)
        assert torch.count_nonzero(update(x)) == 0
        _randomise_adapters(update)
        delta = update(x)
        assert delta.shape == (3, 36)
        assert torch.count_nonzero(delta[:, 12:24]) == 0
        assert torch.count_nonzero(delta[:, :12]) > 0 and torch.count_nonzero(delta[:, 24:]) > 0


def test_fact_factors_are_shared_and_counted_once() -> None:
    make = ma_sam_block_adapters(rank=4, hidden_dim=8)
    adapters = make([32] * 4)
    assert make([32])[0].qkv.factors is not adapters[0].qkv.factors, "each encoder gets its own factors"
    assert adapters[0].qkv.factors is adapters[3].qkv.factors
    model = nn.ModuleList(adapters)
    per_block = sum(p.numel() for p in adapters[0].parameters()) - sum(
        p.numel() for p in adapters[0].qkv.factors.parameters()
    )
    shared = sum(p.numel() for p in adapters[0].qkv.factors.parameters())
    assert count_parameters(model) == (4 * per_block + shared, 4 * per_block + shared)


def test_mark_trainable_by_type(tiny_sam) -> None:
    head = nn.Linear(64, 3)
    model = nn.ModuleDict({"encoder": build_encoder3d(tiny_sam.image_encoder, masksam_block_adapters()), "head": head})
    total, trainable = mark_trainable(model, modules=[head])
    for name, p in model.named_parameters():
        owner = name.rsplit(".", 1)[0]
        module = model.get_submodule(owner)
        is_adapter = any(isinstance(m, Adapter) for n, m in model.named_modules() if owner.startswith(n) and n)
        assert p.requires_grad == (is_adapter or name.startswith("head")), name
        assert not isinstance(module, nn.LayerNorm) or p.requires_grad == is_adapter
    adapter_params = sum(
        p.numel() for m in model.modules() if isinstance(m, DepthConvAdapter3D) for p in m.parameters()
    )
    assert trainable == adapter_params + sum(p.numel() for p in head.parameters())
    assert total > trainable


def test_slice_embeddings() -> None:
    emb = SliceEmbedding(num_slices=3, dim=4)
    with torch.no_grad():
        emb.embedding.copy_(torch.arange(12.0).reshape(3, 4))
    out = emb(torch.zeros(6, 2, 2, 4))
    assert torch.equal(out[4, 1, 0], torch.arange(4.0, 8.0)), "token of stack 1, slice 1"
    with pytest.raises(ValueError, match="num_slices=3"):
        emb(torch.zeros(4, 2, 2, 4))
    dense = SliceDenseEmbedding(3, 8, (4, 4))
    assert dense(torch.ones(1, 8, 4, 4), batch=2).shape == (6, 8, 4, 4)


@pytest.mark.parametrize(("n", "grid"), [(4, (2, 2)), (9, (3, 3)), (7, (1, 7)), (6, (2, 3)), (1, (1, 1))])
def test_depth_grid(n: int, grid: tuple[int, int]) -> None:
    assert depth_grid(n) == grid
