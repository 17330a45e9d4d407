# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""MONAI transforms of the package: the shared preprocessing, input and prompt-file validation with errors that
name the file, key and value, prompt mapping to model space, prompt simulation and evaluation prompt protocols."""

from __future__ import annotations

from masksam.transforms.checks import Problem, Volume, check_volumes, format_problems
from masksam.transforms.presets import (
    INTENSITY_PRESETS,
    foreground_intensity_stats,
    intensity_transform,
    load_transforms,
)
from masksam.transforms.prompt_protocols import (
    PROMPT_PROTOCOLS,
    PromptProtocold,
    box_prompts,
    click_prompts,
    shifted_boxes,
)
from masksam.transforms.prompt_simulation import (
    RandPromptsd,
    error_region_clicks,
    jitter_boxes,
    pack_slice_prompts,
    random_voxels,
    tight_boxes,
)
from masksam.transforms.prompt_space import (
    BOX_SLOTS,
    PromptsToVoxeld,
    PromptsToWorldd,
    SlicePromptsd,
    box_corners,
    empty_slice_prompts,
    slice_prompts,
)
from masksam.transforms.prompts import (
    PROMPT_SCHEMA,
    LoadPromptsd,
    PromptError,
    Prompts,
    read_prompt_file,
    read_prompts,
    validate_prompts,
)
from masksam.transforms.structures import SaveStructuresd
from masksam.transforms.validation import CheckedLoadImaged, ValidateInputd

__all__ = [
    "BOX_SLOTS",
    "INTENSITY_PRESETS",
    "PROMPT_PROTOCOLS",
    "PROMPT_SCHEMA",
    "CheckedLoadImaged",
    "LoadPromptsd",
    "Problem",
    "PromptError",
    "PromptProtocold",
    "Prompts",
    "PromptsToVoxeld",
    "PromptsToWorldd",
    "RandPromptsd",
    "SaveStructuresd",
    "SlicePromptsd",
    "ValidateInputd",
    "Volume",
    "box_corners",
    "box_prompts",
    "check_volumes",
    "click_prompts",
    "empty_slice_prompts",
    "error_region_clicks",
    "foreground_intensity_stats",
    "format_problems",
    "intensity_transform",
    "jitter_boxes",
    "load_transforms",
    "pack_slice_prompts",
    "random_voxels",
    "read_prompt_file",
    "read_prompts",
    "shifted_boxes",
    "slice_prompts",
    "tight_boxes",
    "validate_prompts",
]
