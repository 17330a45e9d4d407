# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from masksam.data.cache import default_cache_dir

_REPO_ENTRIES = pytest.StashKey[set[str]]()


REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    # Under pytest-xdist each worker gets one thread: 2 workers on 2 cores, no oversubscription.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_REPO_ENTRIES] = set(os.listdir(REPO))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Tests write under tmp_path, never into the checkout (a bundle run with ``bundle_root: .`` once did)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return  # the controller checks once, after all workers
    new = set(os.listdir(REPO)) - session.config.stash[_REPO_ENTRIES] - {".pytest_cache"}
    if new:
        session.config.get_terminal_writer().line(
            f"tests created {sorted(new)} in the repository root {REPO}: they must write under tmp_path", red=True
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def real_cache_dir() -> Path:
    """Cache for real data: ``$MASKSAM_CACHE`` or ``~/.cache/masksam``, so repeated runs do not fetch again."""
    return default_cache_dir()
