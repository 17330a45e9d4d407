# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Activation checkpointing as a switch: one call site for every module with ``gradient_checkpointing``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch.utils.checkpoint import checkpoint

__all__ = ["maybe_checkpoint"]

T = TypeVar("T")


def maybe_checkpoint(enabled: bool, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, recomputed in the backward pass (non-reentrant) when ``enabled`` and gradients are on."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)
