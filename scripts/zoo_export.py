# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Write a self-contained copy of a bundle for the MONAI Model Zoo (``make zoo-export BUNDLE=masksam``).

The Model Zoo installs only the pins of ``configs/metadata.json`` and runs the bundle folder alone, so
the copy carries the ``masksam`` package under ``scripts/masksam`` and every reference to ``masksam.``
(in the package's own imports and in the configs) becomes ``scripts.masksam.``.

The zoo's CI checks the Python code under ``models/`` with isort, black and flake8 (its ``setup.cfg`` and
``pyproject.toml``: line length 120, isort profile black, black with ``--skip-magic-trailing-comma``). Inside
the zoo ``scripts`` is a third-party module to isort (it is not at the zoo's root), so the rewritten imports
sort among the others: the copy is formatted with those settings (:data:`ISORT_SETTINGS`, :func:`black_mode`)
so that it passes the checks as written.

    python scripts/zoo_export.py masksam build/zoo
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path
from typing import Any

__all__ = ["ISORT_SETTINGS", "LINE_LENGTH", "black_mode", "export_bundle", "format_python", "main"]

REPO = Path(__file__).resolve().parents[1]
_REF = re.compile(r"(?<![\w.])masksam(?=[.\s]|$)", re.MULTILINE)
_SKIP = ("__pycache__", "*.pyc", "demo.py", "eval", "*.pt", "*.ts", "*.pth")

#: Line length of the zoo's isort, black and flake8 settings.
LINE_LENGTH = 120
#: The zoo's isort settings, with ``scripts`` placed as the zoo's checkout places it (not first party).
ISORT_SETTINGS: dict[str, Any] = {
    "profile": "black",
    "line_length": LINE_LENGTH,
    "known_first_party": ["models"],
    "known_third_party": ["scripts"],
}


def black_mode() -> Any:
    """The zoo's black settings: ``line-length = 120``, targets py37-py39, ``--skip-magic-trailing-comma``."""
    import black

    targets = {black.TargetVersion.PY37, black.TargetVersion.PY38, black.TargetVersion.PY39}
    return black.Mode(target_versions=targets, line_length=LINE_LENGTH, magic_trailing_comma=False)


def format_python(code: str) -> str:
    """``code`` as the zoo's ``runtests.sh --autofix`` leaves it: isort, then black, with the zoo's settings.

    Raises:
        ImportError: if isort or black is not installed (they come with the package's ``dev`` and ``test`` extras).
    """
    try:
        import black
        import isort
    except ImportError as err:
        raise ImportError(
            f"zoo export formats the copy with isort and black, but {err.name!r} is not installed: "
            "pip install -e '.[dev]' (or make venv)"
        ) from err
    sorted_code = isort.code(code, config=isort.Config(**ISORT_SETTINGS))
    return black.format_str(sorted_code, mode=black_mode())


def _rewrite(path: Path) -> None:
    text = _REF.sub("scripts.masksam", path.read_text())
    # `$import a.b` binds the name "a.b" in a bundle config, so the top package must be imported by name.
    text = text.replace("$import scripts.masksam\n", "$import scripts\n")
    path.write_text(format_python(text) if path.suffix == ".py" else text)


def export_bundle(name: str, out_dir: str | Path) -> Path:
    """Copy ``bundles/<name>`` and the package into ``<out_dir>/<name>`` with references rewritten and the Python
    code formatted with the zoo's isort and black settings."""
    src = REPO / "bundles" / name
    if not (src / "configs" / "metadata.json").is_file():
        raise FileNotFoundError(f"no bundle named {name!r} under {REPO / 'bundles'}")
    dest = Path(out_dir) / name
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(*_SKIP))
    scripts = dest / "scripts"
    scripts.mkdir(exist_ok=True)
    (scripts / "__init__.py").touch()
    shutil.copytree(REPO / "masksam", scripts / "masksam", ignore=shutil.ignore_patterns(*_SKIP))
    for path in list(dest.rglob("*.py")) + list((dest / "configs").glob("*.yaml")):
        _rewrite(path)
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", help="bundle folder name under bundles/, e.g. masksam")
    parser.add_argument("out_dir", nargs="?", default=str(REPO / "build" / "zoo"))
    args = parser.parse_args()
    print(export_bundle(args.bundle, args.out_dir))


if __name__ == "__main__":
    main()
