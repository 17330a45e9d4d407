# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Gradient-norm clipping for MONAI's ``SupervisedTrainer``, which has no clipping setting of its own.

The trainer fires ``IterationEvents.BACKWARD_COMPLETED`` between ``backward()`` and the optimiser step; the handler
clips there (after unscaling the gradients when AMP's gradient scaler is in use, as PyTorch's AMP recipe does).
"""

from __future__ import annotations

import math

import torch
from ignite.engine import Engine
from monai.engines.utils import IterationEvents

__all__ = ["GradientClipHandler"]


class GradientClipHandler:
    """Clip the total gradient norm of the optimiser's parameters before each optimiser step.

    Args:
        max_norm: largest total norm (the research code of MaskSAM clips at 12, as nnU-Net does); None: no clipping.
        norm_type: the p of the p-norm (``inf`` for the largest absolute value).

    Attach by listing it in the trainer's ``train_handlers`` (bundle configs: ``train#handlers``). With gradient
    accumulation (``accumulation_steps > 1``) it clips only before the iterations that step the optimiser.
    """

    def __init__(self, max_norm: float | None = 12.0, norm_type: float = 2.0) -> None:
        if max_norm is not None and not (math.isfinite(float(max_norm)) and float(max_norm) > 0):
            raise ValueError(f"grad_clip_norm must be a positive number or null (no clipping), got {max_norm!r}")
        if not float(norm_type) > 0:
            raise ValueError(f"norm_type must be > 0, got {norm_type!r}")
        self.max_norm = None if max_norm is None else float(max_norm)
        self.norm_type = float(norm_type)

    def attach(self, engine: Engine) -> None:
        """Clip at ``IterationEvents.BACKWARD_COMPLETED`` of ``engine`` (a MONAI ``SupervisedTrainer``)."""
        if self.max_norm is not None:
            engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    @staticmethod
    def _steps_now(engine: Engine) -> bool:
        """Whether the trainer steps the optimiser after this backward pass (MONAI's accumulation rule)."""
        acc = int(getattr(engine, "accumulation_steps", 1) or 1)
        if acc <= 1:
            return True
        epoch_length = engine.state.epoch_length
        if epoch_length is None:
            return engine.state.iteration % acc == 0
        local = (engine.state.iteration - 1) % epoch_length + 1  # 1-indexed within the epoch
        return local % acc == 0 or local == epoch_length

    def __call__(self, engine: Engine) -> None:
        if self.max_norm is None or not self._steps_now(engine):
            return
        optimizer = engine.optimizer  # type: ignore[attr-defined]
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return
        scaler = getattr(engine, "scaler", None)
        if getattr(engine, "amp", False) and scaler is not None:
            scaler.unscale_(optimizer)  # clip the true gradients; scaler.step() then skips its own unscaling
        torch.nn.utils.clip_grad_norm_(params, self.max_norm, norm_type=self.norm_type)
