# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Auto3DSeg algorithm template ``masam`` (``configs/`` + ``scripts/``, copied to ``work_dir/masam_<fold>``).

The algorithm class is ``masksam.auto3dseg.MasamAlgo``; ``scripts/algo.py`` re-exports it for registration by
folder (Auto3DSeg then derives ``masam.scripts.algo.MasamAlgo``).
"""
