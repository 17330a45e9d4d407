# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Load trained weights into a bundle's network, with errors that say which setting differs.

MONAI's ``CheckpointLoader`` reports a wrong checkpoint as PyTorch's ``size mismatch for
network.decoder.class_head.linear.weight ...``. :class:`ModelWeightsLoader` checks the file first and
names the file, the keys and, where a key identifies one, the config setting to change, e.g.
``model.pt was trained with num_classes=4, this config has num_classes=3 (set --num_classes 4)``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence

import torch
from ignite.engine import Engine
from monai.handlers import CheckpointLoader
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from masksam.backbones.sam import CheckpointError, read_state_dict

__all__ = ["SETTING_HINTS", "ModelWeightsLoader", "check_state_dict"]

logger = logging.getLogger(__name__)

#: (key pattern, setting, how to read the setting from a tensor shape) for the networks of this package.
SETTING_HINTS: tuple[tuple[str, str, int, int, int], ...] = (
    # pattern, setting, dim of the shape that holds it, scale, offset: value = shape[dim] * scale + offset
    (r"class_head\.linear\.weight$", "num_classes", 0, 1, -1),  # K classes + "no object"
    (r"prompt_generator\.mask_head\.weight$", "num_queries", 0, 1, 0),
    (r"slice_embedding\.embedding$", "num_slices", 0, 1, 0),
    (r"stem\.block\.conv\.weight$", "in_channels", 1, 1, 0),
    (r"encoder\.pos_embed$", "patch_size", 1, 16, 0),  # ViT grid of 16-pixel patches
)


def _hint(key: str, saved: Sequence[int], wanted: Sequence[int]) -> str:
    for pattern, setting, dim, scale, offset in SETTING_HINTS:
        if re.search(pattern, key) and len(saved) > dim and len(wanted) > dim:
            was, now = saved[dim] * scale + offset, wanted[dim] * scale + offset
            return f"; the checkpoint was trained with {setting}={was}, this config has {now} (set --{setting} {was})"
    return ""


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise :class:`CheckpointError` unless ``state`` loads strictly into ``model``.

    The message names ``source``, the first differing keys with both shapes, the config setting a key
    stands for (:data:`SETTING_HINTS`), and missing/unexpected keys (another backbone or another network).
    """
    own = model.state_dict()
    lines = []
    for key, value in state.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            saved, wanted = tuple(value.shape), tuple(own[key].shape)
            lines.append(f"{key}: checkpoint {saved}, model {wanted}{_hint(key, saved, wanted)}")
    missing = [k for k in own if k not in state]
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
    """

    def __init__(
        self,
        load_path: str | os.PathLike[str],
        network: nn.Module,
        map_location: str | torch.device | dict | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(
            load_path=os.fspath(load_path), load_dict={"model": network}, map_location=map_location, name=name
        )
        self.network = network

    def __call__(self, engine: Engine) -> None:
        if not os.path.isfile(self.load_path):
            raise CheckpointError(
                f"model weights not found: {self.load_path!r} (train the bundle first, or point the config at them)"
            )
        state = read_state_dict(self.load_path)  # a plain state dict, or the one under "model"
        # Trained weights are saved from the plain network: unwrap DistributedDataParallel/DataParallel.
        network = (
            self.network.module
            if isinstance(self.network, (nn.DataParallel, DistributedDataParallel))
            else self.network
        )
        check_state_dict(network, state, repr(self.load_path))
        network.load_state_dict(state)  # copies into the network's tensors, on its device
        logger.info("loaded %d tensors from %s", len(state), self.load_path)
