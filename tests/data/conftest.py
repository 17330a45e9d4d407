# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Fixtures for the data tests: the real-data cache shared by a whole session."""

from __future__ import annotations

from pathlib import Path

import pytest

from masksam.data.cache import default_cache_dir


@pytest.fixture(scope="session")
def real_cache_dir() -> Path:
    """Cache for real data: ``$MASKSAM_CACHE`` or ``~/.cache/masksam``, so repeated runs do not fetch again."""
    return default_cache_dir()
