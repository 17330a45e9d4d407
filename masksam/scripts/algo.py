# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""``masksam.scripts.algo.MasksamAlgo``: the name Auto3DSeg derives when the template is registered by folder."""

from __future__ import annotations

from masksam.auto3dseg.algo import MasksamAlgo

__all__ = ["MasksamAlgo"]
