# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""The cause of a failed bundle run, named in the last lines a user sees.

MONAI wraps every error raised while a config is instantiated or evaluated (``Failed to instantiate component
...``, ``Failed to evaluate ConfigExpression ...``, ``applying transform ...``), so the message that names the
file, key and value (raised by this package's checks) sits in the middle of a long chained traceback, and a
DataLoader worker passes it on only as text. :func:`describe_failure` finds it again: the innermost error
raised by this package's code (its messages name the file, key, value and the setting to change), else the
innermost error of the chain. :func:`install_error_summary`, the first step of every bundle's ``initialize``,
prints it once after Python's traceback.
"""

from __future__ import annotations

import re
import sys
import threading
import time
import traceback
from multiprocessing.dummy import DummyProcess
from pathlib import Path
from types import TracebackType

__all__ = ["describe_failure", "exception_chain", "install_error_summary"]

#: The package's folder (``masksam/``, or ``scripts/masksam/`` in a Model Zoo export): errors raised in files
#: under it are this package's own.
_PACKAGE_DIR = Path(__file__).resolve().parents[1]

#: How a DataLoader worker's traceback text starts (``torch._utils.ExceptionWrapper``).
_WORKER_MARK = "Original Traceback (most recent call last):\n"
_CHAIN_SEPARATORS = re.compile(
    r"\n\n(?:The above exception was the direct cause of the following exception:"
    r"|During handling of the above exception, another exception occurred:)\n\n"
)
_FRAME = re.compile(r'^  File "(?P<file>[^"]+)", line \d+')
_EXCEPTION_LINE = re.compile(r"^(?P<type>[A-Za-z_][\w.]*)(?:: (?P<message>.*))?$", re.DOTALL)

#: Longest wait, in seconds, for thread-pool workers to finish their item before the interpreter exits.
_POOL_WAIT = 60.0

_HEADLINE = "The run stopped because of this error (the traceback above shows where it was raised):"


def _is_own_file(filename: str) -> bool:
    try:
        return Path(filename).resolve().is_relative_to(_PACKAGE_DIR)
    except (OSError, ValueError):
        return False


def exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes (or, where no cause was set, the exceptions being handled), outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return chain


def _raised_in(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    return frames[-1].filename if frames else ""


def _format(type_name: str, message: str, own: bool) -> str:
    """This package's errors by their message (it says what is wrong); others as ``Type: message``."""
    message = message.strip()
    if own and message:
        return message
    return f"{type_name}: {message}" if message else type_name


def _from_worker_text(text: str) -> str | None:
    """The cause in a DataLoader worker's traceback text, chosen as :func:`describe_failure` chooses it."""
    start = text.find(_WORKER_MARK)
    if start < 0:
        return None
    body = "Traceback (most recent call last):\n" + text[start + len(_WORKER_MARK) :]
    found: list[tuple[str, bool]] = []  # (description, raised by this package), innermost first
    for segment in _CHAIN_SEPARATORS.split(body):
        lines = segment.rstrip("\n").split("\n")
        frames = [i for i, line in enumerate(lines) if _FRAME.match(line)]
        if not frames:
            continue
        rest = lines[frames[-1] + 1 :]
        while rest and rest[0].startswith("    "):  # the source line and its ^^^ markers
            rest = rest[1:]
        match = _EXCEPTION_LINE.match("\n".join(rest))
        if match is None:
            continue
        own = _is_own_file(_FRAME.match(lines[frames[-1]]).group("file"))  # type: ignore[union-attr]
        type_name = match.group("type").rsplit(".", 1)[-1]
        found.append((_format(type_name, match.group("message") or "", own), own))
    if not found:
        return None
    own_found = [description for description, own in found if own]
    return own_found[0] if own_found else found[0][0]


def describe_failure(exc: BaseException) -> str:
    """The message that names the cause of ``exc``, for the last lines a user reads.

    The innermost error of the chain raised by this package's code is given by its message alone (this
    package's errors name the file, key, value and the setting to change); without one, the innermost error
    of the chain as ``Type: message``. An error re-raised from a DataLoader worker carries the worker's chain
    only as text: it is read from that text the same way.

    Args:
        exc: the exception that ended the run (the outermost of its chain).

    Returns:
        one line, or several where the message has several.
    """
    chain = exception_chain(exc)
    for candidate in reversed(chain):  # innermost first
        worker = _from_worker_text(str(candidate))
        if worker is not None:
            return worker
    own = [e for e in chain if _is_own_file(_raised_in(e))]
    chosen = own[-1] if own else chain[-1]
    return _format(type(chosen).__name__, str(chosen), bool(own))


def _needs_summary(exc: BaseException) -> bool:
    return len(exception_chain(exc)) > 1 or any(_WORKER_MARK in str(e) for e in exception_chain(exc))


def _wait_for_pool_workers(timeout: float) -> None:
    """Let thread-pool workers (``CacheDataset`` caching) finish the item they hold.

    A worker still inside a torch operation when the interpreter finalises after an uncaught error is stopped
    mid-call, and the process aborts with ``terminate called without an active exception`` after the traceback.
    """
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if isinstance(thread, DummyProcess) and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))


def install_error_summary() -> None:
    """Make uncaught errors end with :func:`describe_failure`'s message, once, after Python's traceback.

    Sets ``sys.excepthook`` to a hook that calls the hook in place before it and then, when the error wraps
    others (a config instantiation or evaluation, a transform, a DataLoader worker), prints a headline and the
    cause to stderr. Installing twice keeps one summary. ``KeyboardInterrupt`` is left as it is. Thread-pool
    workers (``CacheDataset`` caching) still at work are given up to a minute to finish their item first: a worker
    stopped inside a torch operation at interpreter exit aborts the process after the summary.
    """
    previous = sys.excepthook
    if getattr(previous, "_masksam_error_summary", False):
        return

    def hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        _wait_for_pool_workers(_POOL_WAIT)
        previous(exc_type, exc, tb)
        if isinstance(exc, Exception) and _needs_summary(exc):
            try:
                summary = describe_failure(exc)
            except Exception:  # never hide the traceback behind an error of the summary itself
                return
            print(f"\n{_HEADLINE}\n{summary}", file=sys.stderr, flush=True)

    hook._masksam_error_summary = True  # type: ignore[attr-defined]
    sys.excepthook = hook
