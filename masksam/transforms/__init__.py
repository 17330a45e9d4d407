# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""MONAI transforms of the package: the shared preprocessing, input and prompt-file validation with errors that
name the file, key and value."""

from __future__ import annotations

from masksam.transforms.checks import Problem, Volume, check_volumes, format_problems
from masksam.transforms.presets import (
    INTENSITY_PRESETS,
    foreground_intensity_stats,
    intensity_transform,
    load_transforms,
)
from masksam.transforms.prompts import PROMPT_SCHEMA, LoadPromptsd, PromptError, Prompts, read_prompts, validate_prompts
from masksam.transforms.validation import CheckedLoadImaged, ValidateInputd

__all__ = [
    "INTENSITY_PRESETS",
    "PROMPT_SCHEMA",
    "CheckedLoadImaged",
    "LoadPromptsd",
    "Problem",
    "PromptError",
    "Prompts",
    "ValidateInputd",
    "Volume",
    "check_volumes",
    "foreground_intensity_stats",
    "format_problems",
    "intensity_transform",
    "load_transforms",
    "read_prompts",
    "validate_prompts",
]
