# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Segment Anything adapted to 3D medical image segmentation, the MONAI way.

Sub-packages are imported on demand (``import masksam.networks``); importing ``masksam`` itself is cheap.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
