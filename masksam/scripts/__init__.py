# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Module names Auto3DSeg derives from a template folder named ``masksam``.

Registering ``algorithm_templates/`` by folder makes Auto3DSeg look the class up as
``masksam.scripts.algo.MasksamAlgo``; this package answers that name. The class lives in
:mod:`masksam.auto3dseg`.
"""

from __future__ import annotations

__all__: list[str] = []
