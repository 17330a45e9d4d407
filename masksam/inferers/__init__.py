# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Volume inference: semantic fusion of mask classification, wrappers for MONAI inferers."""

from __future__ import annotations

from masksam.inferers.semantic import SemanticWrapper, semantic_scores

__all__ = ["SemanticWrapper", "semantic_scores"]
