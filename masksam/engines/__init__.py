# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""What ignite/MONAI engines lack: resuming from the newest checkpoint, start-of-run logging."""

from __future__ import annotations

from masksam.engines.logging_utils import log_parameter_counts
from masksam.engines.resume import ResumeHandler, latest_checkpoint

__all__ = ["ResumeHandler", "latest_checkpoint", "log_parameter_counts"]
