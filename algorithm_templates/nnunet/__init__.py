# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Auto3DSeg algorithm template ``nnunet`` (``configs/`` + ``scripts/``, copied to ``work_dir/nnunet_<fold>``).

nnU-Net v2 (the ``nnunetv2`` package, extra ``nnunet`` of masksam) trained, validated and run by its own trainer and
predictor; the algorithm class is ``masksam.auto3dseg.NnunetAlgo``.
"""
