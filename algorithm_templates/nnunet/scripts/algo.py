# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Auto3DSeg entry of the template: the ``BundleAlgo`` class, defined in the package (``masksam.auto3dseg``)."""

from __future__ import annotations

from masksam.auto3dseg.nnunet_algo import NnunetAlgo

__all__ = ["NnunetAlgo"]
