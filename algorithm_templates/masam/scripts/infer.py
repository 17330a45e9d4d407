# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""``InferClass`` for Auto3DSeg's ensembling: ``InferClass(config_files, **override).infer({"image": path})``.

Returns ``(K, H, W, D)`` class probabilities (background included; the softmax averaged over MA-SAM's slice windows)
as a MetaTensor in the input image's grid. Nothing is imported from this folder by name, so every template's
inference can share one process.
"""

from __future__ import annotations

from masksam.auto3dseg.inference import TemplateInferer as InferClass

__all__ = ["InferClass"]
