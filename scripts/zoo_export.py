# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Write a self-contained copy of a bundle for the MONAI Model Zoo (``make zoo-export BUNDLE=masksam``).

The Model Zoo installs only the pins of ``configs/metadata.json`` and runs the bundle folder alone, so
the copy carries the ``masksam`` package under ``scripts/masksam`` and every reference to ``masksam.``
(in the package's own imports and in the configs) becomes ``scripts.masksam.``.

    python scripts/zoo_export.py masksam build/zoo
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

__all__ = ["export_bundle", "main"]

REPO = Path(__file__).resolve().parents[1]
_REF = re.compile(r"(?<![\w.])masksam(?=[.\s]|$)", re.MULTILINE)
_SKIP = ("__pycache__", "*.pyc", "demo.py", "eval", "*.pt", "*.ts", "*.pth")


def _rewrite(path: Path) -> None:
    text = _REF.sub("scripts.masksam", path.read_text())
    # `$import a.b` binds the name "a.b" in a bundle config, so the top package must be imported by name.
    path.write_text(text.replace("$import scripts.masksam\n", "$import scripts\n"))


def export_bundle(name: str, out_dir: str | Path) -> Path:
    """Copy ``bundles/<name>`` and the package into ``<out_dir>/<name>`` with references rewritten."""
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
    for path in list(scripts.rglob("*.py")) + list((dest / "configs").glob("*.yaml")):
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
