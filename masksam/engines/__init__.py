# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""What ignite/MONAI engines lack: saving and resuming the whole training state, weights loading with clear
errors, gradient-norm clipping, start-of-run logging, the cause of a failed run in its last lines, folder
inference that survives a bad case, and validation under torchrun with fewer cases than ranks."""

from __future__ import annotations

from masksam.engines.checkpoint import TrainingCheckpointHandler, latest_checkpoint
from masksam.engines.clipping import GradientClipHandler
from masksam.engines.distributed import validation_sampler
from masksam.engines.errors import describe_failure, exception_chain, install_error_summary
from masksam.engines.folder_inference import (
    CASE_ERROR_KEY,
    CaseReport,
    NewFilesLayout,
    OutputExistsError,
    TolerantDataset,
)
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
    "CASE_ERROR_KEY",
    "CaseReport",
    "NewFilesLayout",
    "OutputExistsError",
    "TolerantDataset",
    "SETTING_NAMES",
    "GradientClipHandler",
    "ModelWeightsLoader",
    "TrainingCheckpointHandler",
    "check_state_dict",
    "checked_state_dict",
    "describe_failure",
    "exception_chain",
    "install_error_summary",
    "latest_checkpoint",
    "load_network_weights",
    "log_parameter_counts",
    "unwrap",
    "validation_sampler",
]
