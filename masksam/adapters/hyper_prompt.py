# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Med-SA's Hyper-Prompting adapter (HyP-Adpt): a decoder adapter whose weights come from the prompt."""

from __future__ import annotations

import torch
from torch import nn

from masksam.adapters.base import Adapter

__all__ = ["HyperPromptingAdapter", "PromptConditionedAdapter"]


class PromptConditionedAdapter(Adapter):
    """Marker base class of decoder adapters that also receive the decoding problem's prompt embedding.

    :class:`~masksam.networks.AdaptedTwoWayTransformer` calls them as ``adapter(x, num_slices, prompt)`` with
    ``prompt (N, C)``; every other slot adapter is called as ``adapter(x, num_slices)``.
    """


class HyperPromptingAdapter(PromptConditionedAdapter):
    """Bottleneck adapter whose down-projected tokens are modulated by weights generated from the prompt.

    Med-SA (Wu et al., MedIA 2025, "HyP-Adpt"): the prompt embedding ``e (N, C)`` goes through an MLP whose
    output is reshaped to a weight matrix ``W = I + M(e)`` of shape ``(N, r, r)``; the adapter computes
    ``up(ReLU(LayerNorm(down(x) @ W)))``. The MLP's last layer and ``up`` are zero-initialised, so at
    initialisation ``W = I`` and the delta is zero: the decoder computes what SAM's does. The released research
    code has no decoder adapters; this follows the paper's equation, with one ``W`` per decoding problem (the
    mean of its sparse prompt tokens) shared by all of its tokens.

    Args:
        dim: token width C.
        hidden_dim: bottleneck width r.
        prompt_dim: width of the prompt embedding (SAM: the token width).
        hyper_hidden_dim: hidden width of the weight-generating MLP.
    """

    def __init__(self, dim: int, hidden_dim: int, prompt_dim: int | None = None, hyper_hidden_dim: int = 64) -> None:
        super().__init__()
        prompt_dim = dim if prompt_dim is None else prompt_dim
        if min(dim, hidden_dim, prompt_dim, hyper_hidden_dim) <= 0:
            raise ValueError(
                f"dim, hidden_dim, prompt_dim and hyper_hidden_dim must be positive, got "
                f"{dim}, {hidden_dim}, {prompt_dim}, {hyper_hidden_dim}"
            )
        self.hidden_dim = hidden_dim
        self.down = nn.Linear(dim, hidden_dim)
        self.hyper = nn.Sequential(
            nn.Linear(prompt_dim, hyper_hidden_dim), nn.ReLU(), nn.Linear(hyper_hidden_dim, hidden_dim * hidden_dim)
        )
        self.norm = nn.LayerNorm(hidden_dim)
        self.act = nn.ReLU()
        self.up = nn.Linear(hidden_dim, dim)
        for layer in (self.hyper[-1], self.up):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def weights(self, prompt: torch.Tensor) -> torch.Tensor:
        """``prompt (N, C_p)`` -> per-problem weights ``W = I + M(prompt)`` of shape ``(N, r, r)``."""
        r = self.hidden_dim
        eye = torch.eye(r, device=prompt.device, dtype=prompt.dtype)
        return eye + self.hyper(prompt).reshape(-1, r, r)

    def forward(self, x: torch.Tensor, num_slices: int, prompt: torch.Tensor) -> torch.Tensor:
        """``x (N, T, C)`` tokens (channels-last), ``prompt (N, C_p)`` -> delta ``(N, T, C)``."""
        if x.ndim != 3 or prompt.ndim != 2 or prompt.shape[0] != x.shape[0]:
            raise ValueError(
                f"expected tokens (N, T, C) and one prompt embedding (N, C_p) per problem, got {tuple(x.shape)} "
                f"and {tuple(prompt.shape)}"
            )
        modulated = torch.bmm(self.down(x), self.weights(prompt))
        return self.up(self.act(self.norm(modulated)))
