# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""DataAnalyzer statistics of typical datasets, shared by the heuristics and the template tests."""

from __future__ import annotations


def datastats(
    shape: list[int],
    spacing: list[float],
    labels: list[int],
    n_cases: int,
    fg: tuple[float, float] = (-80.0, 240.0),
    channels: int = 1,
) -> dict:
    """A ``datastats.yaml`` summary with the keys DataAnalyzer writes (checked by test_keys_exist_in_real_datastats)."""
    return {
        "stats_summary": {
            "image_stats": {
                "shape": {"median": [float(s) for s in shape], "max": shape},
                "channels": {"max": channels, "median": float(channels)},
                "spacing": {"median": spacing},
            },
            "image_foreground_stats": {"intensity": {"percentile_00_5": fg[0], "percentile_99_5": fg[1]}},
            "label_stats": {"labels": labels},
            "n_cases": n_cases,
        }
    }


#: AMOS-like abdominal CT: 512 x 512 slices at 0.82 x 0.8 mm, 2.5 mm apart; 16 classes; 240 cases.
CT_STATS = datastats([512, 512, 100], [0.82, 0.8, 2.5], list(range(16)), 240, fg=(-160.0, 260.0))
#: Brain MRI, isotropic 1 mm, 192 x 224 x 176 voxels; 4 classes; 30 cases; 2 channels.
MRI_STATS = datastats([192, 224, 176], [1.0, 1.0, 1.0], [0, 1, 2, 3], 30, channels=2)
