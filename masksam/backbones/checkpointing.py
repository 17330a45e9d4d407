# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Memory switches shared by the networks.

- :func:`maybe_checkpoint`: activation checkpointing as a switch, one call site for every module with
  ``gradient_checkpointing``;
- :func:`may_reuse_outputs`: whether a module may write into tensors it has just produced (in-place
  residual sums, activations, norms) instead of allocating new ones;
- :data:`TEMPORARY_ELEMENTS` and :func:`map_chunks`: without autograd, batched work runs in chunks whose
  temporaries stay small.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn
from torch.nn.modules.module import _global_forward_hooks, _global_forward_pre_hooks
from torch.utils.checkpoint import checkpoint

__all__ = ["TEMPORARY_ELEMENTS", "map_chunks", "maybe_checkpoint", "may_reuse_outputs"]

T = TypeVar("T")

#: Largest temporary (in elements) that chunked work without autograd aims for: 16 MiB in float32. On
#: CPU, glibc maps every block above 32 MiB afresh at each allocation, zero-filled by the kernel page by
#: page; blocks below that are reused (docs/performance.md, "The memory allocator").
TEMPORARY_ELEMENTS = 1 << 22


def maybe_checkpoint(enabled: bool, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, recomputed in the backward pass (non-reentrant) when ``enabled`` and gradients are on."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def may_reuse_outputs(*modules: nn.Module) -> bool:
    """True without autograd and without forward hooks (global or on ``modules``) that could keep an output.

    Then a tensor that one of ``modules`` has just returned is seen by nobody else, and its caller may
    overwrite it; on CPU each new large tensor costs page faults (docs/performance.md, "The memory
    allocator").
    """
    if torch.is_grad_enabled() or _global_forward_hooks or _global_forward_pre_hooks:
        return False
    return not any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def map_chunks(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, step: int) -> torch.Tensor:
    """``fn(x)`` computed on chunks of ``step`` rows of ``x`` (dim 0), written into one output.

    ``fn`` must map rows independently. The output takes the dtype of the first chunk's result (autocast
    may lower it), as ``fn(x)`` would. With ``step >= len(x)`` this is ``fn(x)``.
    """
    n = x.shape[0]
    if step >= n:
        return fn(x)
    out = None
    for i in range(0, n, step):
        part = fn(x[i : i + step])
        if out is None:
            out = part.new_empty((n, *part.shape[1:]))
        out[i : i + step] = part
    return out
