# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""What ignite/MONAI engines lack: saving and resuming the whole training state, weights loading with clear
errors, gradient-norm clipping, start-of-run logging."""

from __future__ import annotations

from masksam.engines.checkpoint import TrainingCheckpointHandler, latest_checkpoint
from masksam.engines.clipping import GradientClipHandler
from masksam.engines.logging_utils import log_parameter_counts
from masksam.engines.weights import (
    SETTING_NAMES,
    ModelWeightsLoader,
    check_state_dict,
    checked_state_dict,
    load_network_weights,
    unwrap,
)

__all__ = [
    "SETTING_NAMES",
    "GradientClipHandler",
    "ModelWeightsLoader",
    "TrainingCheckpointHandler",
    "check_state_dict",
    "checked_state_dict",
    "latest_checkpoint",
    "load_network_weights",
    "log_parameter_counts",
    "unwrap",
]
