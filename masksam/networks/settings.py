# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Build settings that travel with the weights.

A network built by a builder decorated with :func:`records_build_settings` remembers the builder and
the keyword arguments that shape its architecture (``num_classes``, ``image_size``, ``num_slices``...;
not run-time switches such as ``gradient_checkpointing``). Its ``state_dict()`` carries them as the
module's extra state (``<prefix>_extra_state``: a uint8 tensor of JSON, so state-dict consumers that
expect tensors and ``weights_only`` loading keep working). :func:`build_settings_differences` compares a
state dict's settings with a model's; the package's loaders (:mod:`masksam.engines.weights`) do so before
loading and name each setting that differs. ``load_state_dict`` itself only warns, so that partial loads
for fine-tuning (``strict=False``, MONAI's ``copy_model_state``) keep working; a network keeps the record
of its own build.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import numbers
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
from torch import nn

__all__ = [
    "EXTRA_STATE_SUFFIX",
    "RecordsBuildSettings",
    "build_settings_differences",
    "decode_build_settings",
    "records_build_settings",
]

#: Suffix of the state-dict key of a module's extra state (PyTorch's name).
EXTRA_STATE_SUFFIX = "_extra_state"

F = TypeVar("F", bound=Callable[..., nn.Module])

logger = logging.getLogger(__name__)


def _plain(value: Any) -> Any:
    """JSON-safe copy: tuples become lists, NumPy scalars Python numbers; values of other types their ``str``."""
    if isinstance(value, numbers.Number) and hasattr(value, "item"):  # NumPy and 0-d torch scalars
        value = value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def decode_build_settings(state: Any) -> dict[str, Any] | None:
    """``{"builder": ..., "settings": {...}}`` from a module's extra state, or None when it holds none."""
    if not isinstance(state, torch.Tensor) or state.dtype != torch.uint8 or state.ndim != 1 or not state.numel():
        return None
    try:
        record = json.loads(bytes(state.tolist()).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and "settings" in record else None


def build_settings_differences(saved: Mapping[str, Any], own: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(setting, saved value, own value)`` for every setting that differs (``builder`` first, if it does)."""
    diffs: list[tuple[str, Any, Any]] = []
    if saved.get("builder") != own.get("builder"):
        diffs.append(("builder", saved.get("builder"), own.get("builder")))
    a, b = saved.get("settings", {}), own.get("settings", {})
    diffs += [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return diffs


class RecordsBuildSettings(nn.Module):
    """Base of the method networks: keeps :attr:`build_record` (set by the builder) in the state dict.

    ``build_record`` is ``{"builder": "<module>.<function>", "settings": {name: value}}``, or None for a
    network constructed directly (then nothing is compared on loading).
    """

    build_record: dict[str, Any] | None = None

    def get_extra_state(self) -> torch.Tensor:
        text = json.dumps(self.build_record, sort_keys=True) if self.build_record is not None else ""
        return torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8)

    def set_extra_state(self, state: Any) -> None:
        """Keep this network's own record; warn when the loaded weights were built with other settings."""
        saved = decode_build_settings(state)
        if saved is None or self.build_record is None:
            return
        diffs = build_settings_differences(saved, self.build_record)
        if diffs:
            listed = "; ".join(f"{k}: weights {a!r}, this network {b!r}" for k, a, b in diffs)
            logger.warning("loading weights built with other settings than this network (%s)", listed)


def records_build_settings(*runtime: str) -> Callable[[F], F]:
    """Decorate a builder so that the network it returns records the builder's arguments.

    Args:
        runtime: arguments that do not shape the architecture (weights to start from, memory or speed
            switches); they are not recorded, so weights load whatever their values.

    The builder must return a :class:`RecordsBuildSettings`.
    """

    def decorate(builder: F) -> F:
        signature = inspect.signature(builder)

        @functools.wraps(builder)
        def build(*args: Any, **kwargs: Any) -> nn.Module:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            network = builder(*args, **kwargs)
            if not isinstance(network, RecordsBuildSettings):
                raise TypeError(f"{builder.__qualname__} must return a RecordsBuildSettings, got {type(network)}")
            settings = {k: _plain(v) for k, v in bound.arguments.items() if k not in runtime}
            network.build_record = {"builder": f"{builder.__module__}.{builder.__qualname__}", "settings": settings}
            return network

        return build  # type: ignore[return-value]

    return decorate
