# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Low-rank updates of the frozen qkv projection: LoRA and MA-SAM's FacT-TT (q and v only)."""

from __future__ import annotations

import torch
from torch import nn

from masksam.adapters.base import Adapter

__all__ = ["LoRAQKV", "FacTFactors", "FacTQKV"]


def _qkv_delta(dq: torch.Tensor, dv: torch.Tensor) -> torch.Tensor:
    return torch.cat([dq, torch.zeros_like(dq), dv], dim=-1)


class LoRAQKV(Adapter):
    """LoRA on the q and v parts of a fused qkv projection: ``delta_q = alpha/r * B_q A_q x`` (same for v).

    ``B`` is zero-initialised. Call on the attention input ``(..., C)``; returns ``(..., 3C)``.
    """

    def __init__(self, dim: int, rank: int = 4, alpha: float | None = None) -> None:
        super().__init__()
        if dim <= 0 or rank <= 0:
            raise ValueError(f"dim and rank must be positive, got {dim} and {rank}")
        self.scaling = (alpha if alpha is not None else rank) / rank
        self.q_down, self.v_down = nn.Linear(dim, rank, bias=False), nn.Linear(dim, rank, bias=False)
        self.q_up, self.v_up = nn.Linear(rank, dim, bias=False), nn.Linear(rank, dim, bias=False)
        nn.init.zeros_(self.q_up.weight)
        nn.init.zeros_(self.v_up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scaling * _qkv_delta(self.q_up(self.q_down(x)), self.v_up(self.v_down(x)))


class FacTFactors(Adapter):
    """The factors ``U (C x r)`` and ``V (r x C)`` that FacT-TT shares across all blocks (``V`` zero-init)."""

    def __init__(self, dim: int, rank: int = 32) -> None:
        super().__init__()
        if dim <= 0 or rank <= 0:
            raise ValueError(f"dim and rank must be positive, got {dim} and {rank}")
        self.rank = rank
        self.u = nn.Linear(dim, rank, bias=False)
        self.v = nn.Linear(rank, dim, bias=False)
        nn.init.zeros_(self.v.weight)


class FacTQKV(Adapter):
    """FacT-TT update of one block: ``delta_{q|v} = s * V(dropout(Sigma_{q|v}(U x)))``.

    Args:
        factors: the shared :class:`FacTFactors` (the same instance is given to every block).
        scale: s (MA-SAM: 1).
        dropout: dropout between Sigma and V (MA-SAM: 0.1).
    """

    def __init__(self, factors: FacTFactors, scale: float = 1.0, dropout: float = 0.1) -> None:
        super().__init__()
        self.factors = factors
        self.scale = scale
        self.sigma_q = nn.Linear(factors.rank, factors.rank, bias=False)
        self.sigma_v = nn.Linear(factors.rank, factors.rank, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ux = self.factors.u(x)
        dq = self.factors.v(self.dropout(self.sigma_q(ux)))
        dv = self.factors.v(self.dropout(self.sigma_v(ux)))
        return self.scale * _qkv_delta(dq, dv)
