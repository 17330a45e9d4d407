# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Where the algorithm templates are, and the ``algos`` entries that register them with Auto3DSeg."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ALGORITHMS", "bundle_dir", "template_dir", "algo_entry", "masksam_algo_entry"]

#: Template name -> its ``BundleAlgo`` class (importable from the package).
ALGORITHMS = {
    "masksam": "masksam.auto3dseg.algo.MasksamAlgo",
    "masam": "masksam.auto3dseg.algo.MasamAlgo",
    "nnunet": "masksam.auto3dseg.nnunet_algo.NnunetAlgo",  # needs the extra nnunet (nnunetv2) to generate and train
}


def template_dir() -> Path:
    """The ``algorithm_templates`` folder of this source tree (it holds one folder per template, e.g. ``masksam/``).

    Raises:
        FileNotFoundError: the package was installed without its source tree (templates are not package data).
    """
    import masksam

    root = Path(masksam.__file__).resolve().parent.parent / "algorithm_templates"
    if not (root / "masksam" / "scripts" / "algo.py").is_file():
        raise FileNotFoundError(
            f"algorithm templates not found at {root}: install masksam from its source tree (pip install -e .) "
            "or pass template_path= to the folder holding masksam/"
        )
    return root


def bundle_dir(name: str, template_path: str | os.PathLike[str] | None = None) -> Path:
    """The folder of bundle ``name`` (``bundles/<name>``), which its template builds on.

    Looked for beside the templates folder (``<template_path>/../bundles/<name>``, the layout of this repository)
    and then in the source tree the package was installed from.

    Raises:
        FileNotFoundError: the bundle is in neither place.
    """
    import masksam

    roots = [Path(template_path).resolve().parent] if template_path is not None else []
    roots.append(Path(masksam.__file__).resolve().parent.parent)
    for root in roots:
        path = root / "bundles" / name
        if (path / "configs" / "train.yaml").is_file():
            return path
    raise FileNotFoundError(
        f"the {name!r} bundle's configs (bundles/{name}/configs/train.yaml), which its Auto3DSeg template builds on, "
        f"are not under {' or '.join(str(r) for r in roots)}: install masksam from its source tree (pip install -e .)"
    )


def algo_entry(name: str, template_path: str | os.PathLike[str] | None = None) -> dict[str, dict[str, str]]:
    """``{name: {"_target_": ..., "template_path": ...}}`` for ``AutoRunner(algos=...)`` / ``BundleGen(algos=...)``.

    Args:
        name: a template of :data:`ALGORITHMS`; also the name of the generated folders (``<name>_<fold>``).
        template_path: folder holding ``<name>/`` (default: :func:`template_dir`).
    """
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm template {name!r}; available: {sorted(ALGORITHMS)}")
    path = Path(template_path) if template_path is not None else template_dir()
    if not (path / name / "scripts" / "algo.py").is_file():
        raise FileNotFoundError(f"{path} holds no template {name!r} ({name}/scripts/algo.py)")
    return {name: {"_target_": ALGORITHMS[name], "template_path": str(path.resolve())}}


def masksam_algo_entry(template_path: str | os.PathLike[str] | None = None) -> dict[str, dict[str, str]]:
    """The ``algos`` entry of MaskSAM: ``AutoRunner(algos={**masksam_algo_entry(), ...})``."""
    return algo_entry("masksam", template_path)
