# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Choose what trains by module type, and count parameters."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from torch import nn

from masksam.adapters.base import Adapter

__all__ = ["mark_trainable", "count_parameters", "format_parameter_counts"]

logger = logging.getLogger(__name__)


def mark_trainable(
    model: nn.Module,
    types: tuple[type[nn.Module], ...] = (Adapter,),
    modules: Iterable[nn.Module] = (),
) -> tuple[int, int]:
    """Freeze ``model``, then unfreeze every sub-module that is an instance of ``types`` or listed in ``modules``.

    Selection is by module type and identity, never by parameter-name substrings.

    Args:
        model: the whole network.
        types: module classes whose parameters train (default: every :class:`Adapter`).
        modules: further module instances that train entirely (new heads, stems, decoders).

    Returns:
        ``(total, trainable)`` parameter counts.
    """
    model.requires_grad_(False)
    for module in model.modules():
        if isinstance(module, types):
            module.requires_grad_(True)
    for module in modules:
        module.requires_grad_(True)
    return count_parameters(model)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(total, trainable)`` numbers of parameters; shared parameters are counted once."""
    params = list(model.parameters())  # nn.Module.parameters() already deduplicates shared tensors
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def format_parameter_counts(model: nn.Module, name: str | None = None) -> str:
    """One log line: total, trainable and the trainable share, plus trainable counts per top-level child."""
    total, trainable = count_parameters(model)
    parts = []
    for child_name, child in model.named_children():
        t = sum(p.numel() for p in child.parameters() if p.requires_grad)
        if t:
            parts.append(f"{child_name} {t / 1e6:.2f}M")
    label = name or type(model).__name__
    share = 100.0 * trainable / max(total, 1)
    return f"{label}: {total / 1e6:.2f}M parameters, {trainable / 1e6:.2f}M trainable ({share:.1f}%): " + ", ".join(
        parts
    )
