# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from masksam.data.cache import default_cache_dir

_CHECKOUT_STATE = pytest.StashKey[set[str]]()


REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    # Under pytest-xdist each worker gets one thread: 2 workers on 2 cores, no oversubscription.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


def _checkout_state() -> set[str]:
    """The root's entries (empty folders too) and, in a git checkout, ``git status`` with ignored paths."""
    state = {f"root: {name}" for name in os.listdir(REPO)}
    try:
        proc = subprocess.run(
            ["git", "status", "--porcelain", "--ignored"], cwd=REPO, capture_output=True, text=True, timeout=120
        )
        if proc.returncode == 0:
            state.update(proc.stdout.splitlines())
    except (OSError, subprocess.SubprocessError):
        pass
    return {entry for entry in state if "__pycache__" not in entry and ".pytest_cache" not in entry}


def pytest_sessionstart(session: pytest.Session) -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        session.config.stash[_CHECKOUT_STATE] = _checkout_state()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Tests write under tmp_path, never into the checkout (a bundle run with ``bundle_root: .`` once did)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return  # the controller checks once, after all workers
    new = _checkout_state() - session.config.stash[_CHECKOUT_STATE]
    if new:
        session.config.get_terminal_writer().line(
            f"tests changed the checkout {REPO} (git status): {sorted(new)}; they must write under tmp_path",
            red=True,
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def real_cache_dir() -> Path:
    """Cache for real data: ``$MASKSAM_CACHE`` or ``~/.cache/masksam``, so repeated runs do not fetch again."""
    return default_cache_dir()
