# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""MONAI transforms of the package: input validation with errors that name the file, key and value."""

from __future__ import annotations

from masksam.transforms.checks import Problem, Volume, check_volumes, format_problems
from masksam.transforms.validation import CheckedLoadImaged, ValidateInputd

__all__ = ["CheckedLoadImaged", "Problem", "ValidateInputd", "Volume", "check_volumes", "format_problems"]
