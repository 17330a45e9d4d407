# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Load trained weights into a bundle's network, with errors that say which setting differs.

Every network of this package records the settings it was built with and carries them in its state
dict (:mod:`masksam.networks.settings`). :func:`check_state_dict` compares them with the network at hand
before anything is loaded, and names the file, each setting that differs and the override that fixes
it, e.g. ``models/model.pt was built with other settings than this config's network: trained with
num_classes=4, this config has 3 (set --num_classes 4)``. Weights of another network or backbone are
reported by their missing/unexpected keys and shapes.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from ignite.engine import Engine
from monai.handlers import CheckpointLoader
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from masksam.backbones.sam import CheckpointError, read_state_dict
from masksam.networks.settings import (
    EXTRA_STATE_SUFFIX,
    RecordsBuildSettings,
    build_settings_differences,
    decode_build_settings,
)

__all__ = [
    "SETTING_NAMES",
    "ModelWeightsLoader",
    "check_state_dict",
    "checked_state_dict",
    "load_network_weights",
    "unwrap",
]

logger = logging.getLogger(__name__)

#: Builder arguments that the bundles' and templates' configs set under another name.
SETTING_NAMES: dict[str, str] = {"image_size": "patch_size"}


def _cli(value: Any) -> str:
    """A value as it is typed after ``--key`` on the ``monai.bundle`` command line."""
    if isinstance(value, (list, dict)):
        return '"' + json.dumps(value, separators=(",", ":")) + '"'
    return str(value)


def _recording_modules(model: nn.Module) -> list[tuple[str, RecordsBuildSettings]]:
    """``(state-dict key of the build settings, module)`` for every module of ``model`` that records them."""
    return [
        (f"{name}.{EXTRA_STATE_SUFFIX}" if name else EXTRA_STATE_SUFFIX, module)
        for name, module in model.named_modules()
        if isinstance(module, RecordsBuildSettings) and module.build_record is not None
    ]


def _settings_report(model: nn.Module, state: Mapping[str, Any], names: Mapping[str, str]) -> list[str]:
    lines = []
    for key, module in _recording_modules(model):
        saved = decode_build_settings(state.get(key))
        if saved is None:
            continue
        for setting, was, now in build_settings_differences(saved, module.build_record or {}):
            if setting == "builder":
                lines.append(f"it holds a network of {was}, this config builds {now}")
                continue
            name = names.get(setting, setting)
            lines.append(f"trained with {name}={was!r}, this config has {now!r} (set --{name} {_cli(was)})")
    return lines


def check_state_dict(
    model: nn.Module, state: Mapping[str, Any], source: str, setting_names: Mapping[str, str] | None = None
) -> None:
    """Raise :class:`CheckpointError` unless ``state`` loads strictly into ``model``.

    First the recorded build settings (when both sides have them): the message names ``source``, each
    setting that differs and the override that fixes it (config names from ``setting_names``, default
    :data:`SETTING_NAMES`). Then the keys: the first tensors that differ in shape, and missing/unexpected
    keys (another backbone or another network). A state dict without recorded settings (saved before
    they existed) is checked by its keys and shapes alone.
    """
    names = SETTING_NAMES if setting_names is None else setting_names
    settings = _settings_report(model, state, names)
    if settings:
        raise CheckpointError(
            f"{source} was built with other settings than this config's network:\n  " + "\n  ".join(settings)
        )
    own = model.state_dict()
    lines = []
    for key, value in state.items():
        if key in own and key.rsplit(".", 1)[-1] != EXTRA_STATE_SUFFIX and tuple(own[key].shape) != tuple(value.shape):
            lines.append(f"{key}: checkpoint {tuple(value.shape)}, model {tuple(own[key].shape)}")
    missing = [k for k in own if k not in state and k.rsplit(".", 1)[-1] != EXTRA_STATE_SUFFIX]
    unexpected = [k for k in state if k not in own]
    if not (lines or missing or unexpected):
        return
    parts = []
    if lines:
        parts.append(f"{len(lines)} tensors differ in shape:\n  " + "\n  ".join(lines[:8]))
    if missing or unexpected:
        parts.append(
            f"{len(missing)} keys of the model are not in the checkpoint (e.g. {missing[:3]}) and "
            f"{len(unexpected)} keys of the checkpoint are not in the model (e.g. {unexpected[:3]}): "
            "it holds another network or backbone (check --backbone) or is not a trained bundle model"
        )
    raise CheckpointError(f"{source} does not fit this config's network. " + "\n".join(parts))


def unwrap(network: nn.Module) -> nn.Module:
    """The network inside ``DistributedDataParallel``/``DataParallel`` (trained weights are saved from it)."""
    return network.module if isinstance(network, (nn.DataParallel, DistributedDataParallel)) else network


def checked_state_dict(
    network: nn.Module, state: Mapping[str, Any], source: str, setting_names: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """``state`` checked against ``network`` (:func:`check_state_dict`; ``network`` unwrapped from DDP), ready to load.

    Weights saved before build settings were recorded get the network's own settings filled in.
    """
    network = unwrap(network)
    check_state_dict(network, state, source, setting_names)
    full = dict(state)
    for key, module in _recording_modules(network):
        if key not in full:
            logger.warning("%s holds no build settings (saved by an older version): checked by shapes only", source)
            full[key] = module.get_extra_state()
    return full


def load_network_weights(
    network: nn.Module, state: Mapping[str, Any], source: str, setting_names: Mapping[str, str] | None = None
) -> None:
    """Load ``state`` into ``network`` (unwrapped from DDP) after :func:`checked_state_dict`, on the network's device."""
    unwrap(network).load_state_dict(checked_state_dict(network, state, source, setting_names))


class ModelWeightsLoader(CheckpointLoader):
    """``CheckpointLoader`` of one network, checking the file before loading (see the module docstring).

    Accepts a plain state dict (``model.pt``) or a training checkpoint holding it under ``"model"``
    (``checkpoint_<epoch>.pt``). Reads with ``weights_only=True`` on the CPU and copies into the network's
    tensors on their device.

    Args:
        load_path: the weights file.
        network: the module to load into.
        map_location: kept for the ``CheckpointLoader`` signature (the weights go to the network's device).
        name: logger name.
        path_setting: the config key that sets ``load_path``, named in the error for a missing file.
    """

    def __init__(
        self,
        load_path: str | os.PathLike[str],
        network: nn.Module,
        map_location: str | torch.device | dict | None = None,
        name: str | None = None,
        path_setting: str = "ckpt_path",
    ) -> None:
        super().__init__(
            load_path=os.fspath(load_path), load_dict={"model": network}, map_location=map_location, name=name
        )
        self.network = network
        self.path_setting = path_setting

    def _missing_message(self) -> str:
        """What to do when ``load_path`` does not exist: the last training checkpoint beside it, if there is one."""
        from masksam.engines.checkpoint import latest_checkpoint  # checkpoint.py imports this module

        message = f"model weights not found: {self.load_path!r}."
        folder = os.path.dirname(self.load_path) or "."
        last = latest_checkpoint(folder) if os.path.isdir(folder) else None
        if os.path.basename(self.load_path) == "model.pt":
            message += (
                " model.pt is written by validation during training (the weights of the best val_mean_dice, every"
                " val_interval epochs), so a run that trained but never validated has none."
            )
        if last is not None:
            return message + (
                f" The last training checkpoint there is {last}: use it with --{self.path_setting} {last}"
                " (or train until a validation has run)."
            )
        return message + f" Train the bundle first, or set --{self.path_setting} to the weights file."

    def __call__(self, engine: Engine) -> None:
        if not os.path.isfile(self.load_path):
            raise CheckpointError(self._missing_message())
        state = read_state_dict(self.load_path)  # a plain state dict, or the one under "model"
        load_network_weights(self.network, state, repr(self.load_path))
        logger.info("loaded %d tensors from %s", len(state), self.load_path)
