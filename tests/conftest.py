# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from masksam.data.cache import default_cache_dir


def pytest_configure(config: pytest.Config) -> None:
    # Under pytest-xdist each worker gets one thread: 2 workers on 2 cores, no oversubscription.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def real_cache_dir() -> Path:
    """Cache for real data: ``$MASKSAM_CACHE`` or ``~/.cache/masksam``, so repeated runs do not fetch again."""
    return default_cache_dir()
