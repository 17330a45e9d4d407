# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""``compile=True``: the network through ``torch.compile`` (inductor, on CPU here) gives the plain network's outputs."""

from __future__ import annotations

import pytest
import torch

from masksam.networks import MASKSAM_OUTPUT_KEYS, build_masksam

pytestmark = pytest.mark.xdist_group("compile")  # one slow compilation (minutes on 2 cores), beside the rest


def test_compiled_network_gives_the_plain_outputs_and_the_same_state_dict() -> None:
    torch.manual_seed(0)
    kw = {
        "backbone": "tiny", "image_size": 32, "num_slices": 4, "num_queries": 3, "num_classes": 2,
        "generator_widths": [32, 16, 16, 8, 8], "mask_head_channels": 8,
    }  # fmt: skip
    plain = build_masksam(**kw).eval()
    compiled = build_masksam(**kw, compile=True).eval()
    assert compiled.state_dict().keys() == plain.state_dict().keys(), "compiled in place: checkpoints interchange"
    compiled.load_state_dict(plain.state_dict())
    traced: list[bool] = []  # a hook inside the network sees whether dynamo traces it
    for model in (plain, compiled):
        model.stem.register_forward_pre_hook(lambda *_: traced.append(torch.compiler.is_compiling()))
    x = torch.randn(1, 1, 32, 32, 4)
    with torch.no_grad():
        expected, out = plain(x), compiled(x)
    assert traced == [False, True], "only the compiled network runs through torch.compile"
    for key in MASKSAM_OUTPUT_KEYS:
        torch.testing.assert_close(out[key], expected[key], rtol=1e-4, atol=1e-4)
