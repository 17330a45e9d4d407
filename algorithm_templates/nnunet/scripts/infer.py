# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""``InferClass`` for Auto3DSeg's ensembling: ``InferClass(config_files, **override).infer({"image": path})``.

Returns nnU-Net's ``(K, H, W, D)`` softmax probabilities (background included) as a MetaTensor in the input image's
grid; nnU-Net's predictor is built once per ``InferClass``. Nothing is imported from this folder by name, so every
template's inference can share one process.
"""

from __future__ import annotations

from masksam.auto3dseg.nnunet_workflows import NnunetInferer as InferClass

__all__ = ["InferClass"]
