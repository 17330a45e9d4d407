# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import pytest

from masksam.engines import validation_sampler


def test_each_case_is_validated_once_when_there_are_enough_cases() -> None:
    shards = [list(validation_sampler(list(range(5)), num_replicas=2, rank=r)) for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == [0, 1, 2, 3, 4], "uneven shards, no case repeated"


def test_fewer_cases_than_ranks_validate_the_whole_list_on_each_rank(caplog: pytest.LogCaptureFixture) -> None:
    shards = [list(validation_sampler(["a"], num_replicas=4, rank=r)) for r in range(4)]
    assert shards == [[0]] * 4
    assert "the validation list has 1 case(s) for 4 ranks" in caplog.text


def test_an_empty_validation_list_is_named() -> None:
    with pytest.raises(ValueError, match="the validation list is empty"):
        validation_sampler([], num_replicas=2, rank=0)
