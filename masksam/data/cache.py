# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Cache folder and subprocess helpers shared by the data fetchers.

Fetched data never goes into git: every fetcher writes below :func:`default_cache_dir` (or a folder the caller
gives) and publishes a finished folder with one atomic rename, so two processes fetching at once (for example
``pytest -n 2``) never see a half-written folder.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "CommandError",
    "FetchError",
    "default_cache_dir",
    "resolve_cache_dir",
    "require_executable",
    "run_command",
    "publish_dir",
]

logger = logging.getLogger(__name__)

#: Environment variable that overrides the default cache folder.
CACHE_ENV_VAR = "MASKSAM_CACHE"


class FetchError(RuntimeError):
    """Real data could not be obtained (tool missing, no network, registry or package manager failure).

    Tests that need real data skip on this exception and on nothing else.
    """


class CommandError(RuntimeError):
    """A subprocess exited with a non-zero status.

    Attributes:
        cmd: the command as a list of strings.
        returncode: its exit status.
        stderr: its complete standard error output.
    """

    def __init__(self, cmd: Sequence[str], returncode: int, stderr: str, tail_lines: int = 20) -> None:
        super().__init__(cmd, returncode, stderr, tail_lines)  # all arguments: pickle and copy rebuild the error
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stderr = stderr
        self.tail_lines = tail_lines

    def __str__(self) -> str:
        tail = "\n".join(self.stderr.strip().splitlines()[-self.tail_lines :]) or "<no stderr output>"
        return f"command failed with exit code {self.returncode}: {' '.join(self.cmd)}\n--- last lines of stderr ---\n{tail}"


def default_cache_dir() -> Path:
    """Return the folder where fetched data is cached.

    ``$MASKSAM_CACHE`` when set and non-empty, else ``~/.cache/masksam``. The environment is read on every call,
    never at import. The folder is not created here.

    Returns:
        The cache folder as an absolute path.
    """
    env = os.environ.get(CACHE_ENV_VAR, "").strip()
    return Path(env).expanduser().resolve() if env else Path.home() / ".cache" / "masksam"


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    """Return ``cache_dir`` (or :func:`default_cache_dir` when ``None``) as an existing absolute folder.

    Args:
        cache_dir: a folder, or ``None`` for the default.

    Returns:
        The folder, created if missing.

    Raises:
        NotADirectoryError: if the path exists and is not a folder.
    """
    path = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"cache path {path} exists and is not a directory")
    path.mkdir(parents=True, exist_ok=True)
    return path


def require_executable(name: str, hint: str) -> str:
    """Return the full path of executable ``name`` or raise :class:`FetchError` with ``hint``.

    Args:
        name: program name looked up on ``PATH``.
        hint: what to install or do, appended to the error message.

    Returns:
        The absolute path of the program.

    Raises:
        FetchError: if ``name`` is not on ``PATH``.
    """
    found = shutil.which(name)
    if found is None:
        raise FetchError(f"{name!r} was not found on PATH. {hint}")
    return found


def run_command(
    cmd: Sequence[str | os.PathLike[str]], cwd: str | os.PathLike[str] | None = None, tail_lines: int = 20
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` (no shell), capturing its output, and raise a readable error when it fails.

    Args:
        cmd: program and arguments.
        cwd: working folder, or ``None`` for the current one.
        tail_lines: how many trailing stderr lines the error message shows.

    Returns:
        The completed process with text ``stdout`` and ``stderr``.

    Raises:
        FileNotFoundError: if the program does not exist (message names it).
        CommandError: if the program exits with a non-zero status (message gives the command, exit code and the
            end of stderr).
    """
    args = [os.fspath(c) for c in cmd]
    logger.debug("running %s (cwd=%s)", " ".join(args), cwd)
    try:
        proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"cannot run {' '.join(args)}: program {args[0]!r} not found") from err
    if proc.returncode != 0:
        # some tools (pip) print the actual reason on stdout
        raise CommandError(args, proc.returncode, proc.stderr or proc.stdout, tail_lines=tail_lines)
    return proc


def publish_dir(staged: Path, final: Path) -> Path:
    """Move a fully written folder ``staged`` to ``final`` with one atomic rename.

    When another process published ``final`` first, ``staged`` is deleted and the existing folder is kept, so
    concurrent fetchers of the same data agree without a lock. ``staged`` and ``final`` must be on the same file
    system (create ``staged`` inside the cache folder).

    Args:
        staged: the folder to publish.
        final: where it must end up; must not exist yet, or be a folder published by another process.

    Returns:
        ``final``.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        staged.rename(final)
    except OSError:
        if not final.is_dir():
            raise
        logger.info("%s was published concurrently by another process; keeping it", final)
        shutil.rmtree(staged, ignore_errors=True)
    return final
