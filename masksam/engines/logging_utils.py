# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Start-of-run logging shared by the bundles."""

from __future__ import annotations

import logging

from torch import nn

from masksam.adapters import format_parameter_counts

__all__ = ["log_parameter_counts"]

logger = logging.getLogger("masksam")


def log_parameter_counts(model: nn.Module, name: str | None = None) -> str:
    """Log (and return) total vs trainable parameter counts of ``model``."""
    line = format_parameter_counts(model, name)
    logger.info("%s", line)
    return line
