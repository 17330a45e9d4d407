# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import copy
import pickle
import sys
from pathlib import Path

import pytest

from masksam.data.cache import (
    CommandError,
    FetchError,
    default_cache_dir,
    publish_dir,
    require_executable,
    resolve_cache_dir,
    run_command,
)


def test_default_cache_dir_reads_env_at_call(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MASKSAM_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == (tmp_path / "c").resolve()
    monkeypatch.delenv("MASKSAM_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "masksam"
    monkeypatch.setenv("MASKSAM_CACHE", "")
    assert default_cache_dir() == Path.home() / ".cache" / "masksam"


def test_resolve_cache_dir_creates_and_rejects_files(tmp_path: Path) -> None:
    assert resolve_cache_dir(tmp_path / "a" / "b").is_dir()
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match="f"):
        resolve_cache_dir(tmp_path / "f")


def test_run_command_error_has_command_code_and_stderr_tail() -> None:
    script = "import sys; [print(f'line {i}', file=sys.stderr) for i in range(50)]; sys.exit(3)"
    with pytest.raises(CommandError) as info:
        run_command([sys.executable, "-c", script], tail_lines=5)
    message = str(info.value)
    assert "exit code 3" in message and sys.executable in message
    assert "line 49" in message and "line 45" in message and "line 44" not in message
    assert info.value.returncode == 3 and "line 0" in info.value.stderr


def test_command_error_survives_pickle_and_copy() -> None:
    """Errors cross process boundaries (worker processes pickle them): the message and attributes survive."""
    error = CommandError(["prog", "--flag"], 3, "first\nlast", tail_lines=1)
    for clone in (pickle.loads(pickle.dumps(error)), copy.copy(error)):
        assert str(clone) == str(error) and "last" in str(clone) and "first" not in str(clone)
        assert clone.cmd == ["prog", "--flag"] and clone.returncode == 3 and clone.stderr == "first\nlast"


def test_run_command_success_and_missing_program() -> None:
    assert run_command([sys.executable, "-c", "print('ok')"]).stdout.strip() == "ok"
    with pytest.raises(FileNotFoundError, match="no-such-program-xyz"):
        run_command(["no-such-program-xyz"])


def test_require_executable() -> None:
    assert Path(require_executable("sh", "hint")).is_file()
    with pytest.raises(FetchError, match="install me"):
        require_executable("no-such-program-xyz", "install me")


def test_publish_dir_keeps_first_published(tmp_path: Path) -> None:
    first, second, final = tmp_path / "s1", tmp_path / "s2", tmp_path / "final"
    for d, text in ((first, "first"), (second, "second")):
        d.mkdir()
        (d / "f.txt").write_text(text)
    assert publish_dir(first, final) == final
    assert publish_dir(second, final) == final
    assert (final / "f.txt").read_text() == "first"
    assert not first.exists() and not second.exists()
