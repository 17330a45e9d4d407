# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Data-parallel validation under torchrun, for any number of validation cases."""

from __future__ import annotations

import logging
from collections.abc import Sized

import torch.distributed as dist
from monai.data import DistributedSampler
from torch.utils.data import Sampler, SequentialSampler

__all__ = ["validation_sampler"]

logger = logging.getLogger(__name__)


def validation_sampler(dataset: Sized, num_replicas: int | None = None, rank: int | None = None) -> Sampler:
    """The validation list's sampler on one rank: its own shard, or the whole list when there are fewer cases.

    With at least as many cases as ranks, MONAI's ``DistributedSampler(even_divisible=False)``: each case is
    validated once, by one rank (shards may differ in length by one). With fewer cases than ranks, where that
    sampler raises "the dataset length is less than the number of participating ranks", every rank validates
    the whole list: the metrics, gathered over the ranks, then hold each case once per rank, so their means are
    those of the list (a warning says so; per-case records, e.g. ``MetricsSaver``'s, list each case per rank).

    Args:
        dataset: the validation dataset.
        num_replicas: ranks taking part; default: the process group's world size (1 without one).
        rank: this process's rank; default: the process group's rank (0 without one).

    Raises:
        ValueError: an empty validation list (it names the setting to change).
    """
    distributed = dist.is_available() and dist.is_initialized()
    num_replicas = num_replicas if num_replicas is not None else (dist.get_world_size() if distributed else 1)
    rank = rank if rank is not None else (dist.get_rank() if distributed else 0)
    size = len(dataset)
    if size == 0:
        raise ValueError(
            "the validation list is empty: give the datalist a non-empty 'validation' list or items of the "
            "validation fold (--fold)"
        )
    if size >= num_replicas:
        return DistributedSampler(dataset, even_divisible=False, num_replicas=num_replicas, rank=rank, shuffle=False)
    if rank == 0:
        logger.warning(
            "the validation list has %d case(s) for %d ranks: every rank validates all of them (the metrics are "
            "those of the list; use at least %d validation cases to share the work)",
            size,
            num_replicas,
            num_replicas,
        )
    return SequentialSampler(dataset)  # type: ignore[arg-type]
