# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""The exported bundle passes the Model Zoo's code-format checks (``runtests.sh --codeformat``: isort, black, flake8).

The zoo checks ``models/<bundle>`` from the root of its checkout with the settings of its ``setup.cfg`` and
``pyproject.toml``, and its ``requirements-dev.txt`` adds the flake8 plugins bugbear, comprehensions and
pep8-naming. The test lays the export out the same way, under a root holding those settings.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.bundles.conftest import REPO, TINY_BUNDLES

#: The Model Zoo's ``setup.cfg`` sections for flake8 and isort (Project-MONAI/model-zoo, dev branch).
ZOO_SETUP_CFG = """\
[flake8]
select = B,C,E,F,N,P,T4,W,B9
max_line_length = 120
ignore =
    E203
    E501
    E741
    W503
    W504
    C408
    N812
    B023
per_file_ignores = __init__.py: F401, __main__.py: F401
exclude = *.pyi,.git,.eggs,monai/_version.py,versioneer.py,venv,.venv,_version.py

[isort]
known_first_party = models
profile = black
line_length = 120
skip = .git, .eggs, venv, .venv, versioneer.py, _version.py, conf.py
skip_glob = *.pyi
"""

#: The Model Zoo's ``pyproject.toml`` (black's settings).
ZOO_PYPROJECT = """\
[tool.black]
line-length = 120
target-version = ['py37', 'py38', 'py39']
include = '\\.pyi?$'
"""

#: The three checks as ``runtests.sh --codeformat`` runs them, from the zoo's root.
CHECKS = {
    "isort": ["-m", "isort", "--check", "models"],
    "black": ["-m", "black", "--skip-magic-trailing-comma", "--check", "models"],
    "flake8": ["-m", "flake8", "models", "--count", "--statistics"],
}

FLAKE8_PLUGINS = ("flake8-bugbear", "flake8-comprehensions", "pep8-naming")


@pytest.fixture
def zoo_root(tmp_path: Path) -> Path:
    """An empty zoo checkout: its settings at the root, bundles under ``models/``."""
    root = tmp_path / "model_zoo"
    root.mkdir()
    (root / "setup.cfg").write_text(ZOO_SETUP_CFG)
    (root / "pyproject.toml").write_text(ZOO_PYPROJECT)
    (root / "models").mkdir()
    return root


def test_the_zoo_flake8_plugins_are_installed() -> None:
    """Without its plugins flake8 silently skips the zoo's B, C and N codes: the check below would prove less."""
    version = subprocess.run([sys.executable, "-m", "flake8", "--version"], capture_output=True, text=True, check=True)
    missing = [p for p in FLAKE8_PLUGINS if p not in version.stdout]
    assert not missing, f"install {missing} (the package's test extra has them): {version.stdout}"


@pytest.mark.parametrize("name", sorted(TINY_BUNDLES))
def test_exported_bundle_passes_the_zoo_code_format_checks(zoo_root: Path, name: str) -> None:
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "zoo_export.py"), name, str(zoo_root / "models")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert (zoo_root / "models" / name / "scripts" / "masksam" / "__init__.py").is_file()
    failures = {}
    for tool, args in CHECKS.items():
        proc = subprocess.run([sys.executable, *args], cwd=zoo_root, capture_output=True, text=True)
        if proc.returncode != 0:
            failures[tool] = (proc.stdout + proc.stderr)[-3000:]
    assert not failures, "\n".join(f"--- {tool} ---\n{out}" for tool, out in failures.items())
