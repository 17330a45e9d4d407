# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import sys

import pytest
import torch
from monai.bundle import ConfigParser
from torch.utils.data import DataLoader

from masksam.engines import describe_failure, exception_chain, install_error_summary
from masksam.transforms.validation import ValidateInputd


def _raise_as_monai_does() -> BaseException:
    """This package's ValueError, wrapped by MONAI's config instantiation as a bundle run wraps it."""
    parser = ConfigParser({"check": {"_target_": "masksam.transforms.validation.ValidateInputd", "num_classes": 0}})
    try:
        parser.get_parsed_content("check")
    except RuntimeError as exc:
        return exc
    raise AssertionError("MONAI did not raise")


def test_names_this_packages_error_inside_monais_wrappers() -> None:
    exc = _raise_as_monai_does()
    assert "Failed to instantiate component" in str(exc), "the wrapper the user would otherwise read last"
    assert len(exception_chain(exc)) == 2
    assert describe_failure(exc) == "num_classes must be >= 1 or None, got 0"


def test_a_foreign_root_cause_is_named_with_its_type() -> None:
    try:
        try:
            {}["missing"]
        except KeyError as inner:
            raise RuntimeError("Failed to evaluate ConfigExpression") from inner
    except RuntimeError as exc:
        assert describe_failure(exc) == "KeyError: 'missing'"


def test_an_error_raised_in_a_dataloader_worker_is_read_from_its_text() -> None:
    """Workers send only the traceback text: the cause is found in it, not the worker's outer RuntimeError."""

    class Bad(list):
        def __getitem__(self, index: int) -> dict:
            return ValidateInputd(keys="image", label_key=None, in_channels=2)({"image": torch.zeros(1, 4, 4, 4)})

    loader = DataLoader(Bad([0]), batch_size=1, num_workers=1)
    with pytest.raises(Exception) as info:
        next(iter(loader))
    assert "DataLoader worker process" in str(info.value)
    assert describe_failure(info.value).startswith("<unnamed input> [image]: expected 2 channel(s) (in_channels=2)")


def test_uncaught_errors_end_with_the_cause_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    install_error_summary()
    install_error_summary()  # twice: still one summary
    exc = _raise_as_monai_does()
    sys.excepthook(type(exc), exc, exc.__traceback__)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback (most recent call last)" in err, "Python's traceback comes first"
    assert lines[-1] == "num_classes must be >= 1 or None, got 0"
    assert lines[-2].startswith("The run stopped because of this error")
    assert err.count("The run stopped because of this error") == 1
