# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Every module of the package imports, declares ``__all__``, and every name in it exists."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import masksam

MODULES = sorted(
    m.name for m in pkgutil.walk_packages(masksam.__path__, prefix="masksam.") if not m.name.endswith("__main__")
)


def test_modules_found() -> None:
    assert "masksam.backbones.sam" in MODULES and "masksam.adapters.depth_conv" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_every_name_in_all_exists(name: str) -> None:
    module = importlib.import_module(name)
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names missing attributes: {missing}"
    assert len(set(module.__all__)) == len(module.__all__), f"{name}.__all__ has duplicates"
