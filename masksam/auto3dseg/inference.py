# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""``InferClass`` of the templates: class probabilities of one image, in its own grid, for Auto3DSeg's ensembling."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.data import MetaTensor, decollate_batch, list_data_collate

from masksam.auto3dseg.config import read_algo_config
from masksam.backbones.sam import read_state_dict
from masksam.engines.weights import load_network_weights

__all__ = ["TemplateInferer"]

logger = logging.getLogger(__name__)


class TemplateInferer:
    """Load a generated algorithm's trained network once; :meth:`infer` returns ``(K, H, W, D)`` probabilities.

    This is the ``InferClass`` Auto3DSeg's ``BundleAlgo.get_inferer`` builds from ``scripts/infer.py``. The config
    wires ``network_def``, ``infer#preprocessing``, ``infer#inferer`` and ``infer#postprocessing`` (``Invertd`` back
    to the input's grid); ``infer#inferer`` applied to ``network_def`` must give probabilities over K classes,
    background included: MaskSAM's :class:`masksam.inferers.SemanticWrapper` with ``normalize=True`` under a
    sliding window, or MA-SAM's logits under :class:`masksam.inferers.SliceWindowInferer` (which averages their
    softmax). Weights come from ``<ckpt_dir>/model.pt``.

    Args:
        config_file: config paths, a list or comma-joined.
        override: settings of the config. Ensembling also passes ``rank`` (selects ``cuda:<rank>`` when CUDA is
            available) and keys for other purposes (``image_save_func``, ``n_best``...), which are ignored.
            ``sam_checkpoint`` is not read (``model.pt`` holds the whole network).
    """

    def __init__(self, config_file: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], **override: Any) -> None:
        rank = int(override.pop("rank", 0) or 0)
        if "device" not in override and torch.cuda.is_available():
            override["device"] = f"$torch.device('cuda:{rank % torch.cuda.device_count()}')"
        override.setdefault("sam_checkpoint", None)  # the trained weights hold SAM's too
        parser = read_algo_config(config_file, override)
        self.device = torch.device(parser.get_parsed_content("device"))
        self.amp = bool(parser.get_parsed_content("amp")) and self.device.type == "cuda"
        self.amp_dtype = parser.get_parsed_content("amp_dtype") if self.amp else None
        self.checkpoint = os.path.join(parser.get_parsed_content("ckpt_dir"), "model.pt")
        if not os.path.isfile(self.checkpoint):
            raise FileNotFoundError(f"trained weights not found: {self.checkpoint} (has the fold been trained?)")
        self.network = parser.get_parsed_content("network_def")
        # weights_only, on the CPU; a network of other settings is an error naming the setting that differs
        load_network_weights(self.network, read_state_dict(self.checkpoint), repr(self.checkpoint))
        self.network.to(self.device).eval()
        logger.info("loaded %s", self.checkpoint)
        self.preprocessing = parser.get_parsed_content("infer#preprocessing")
        self.inferer = parser.get_parsed_content("infer#inferer")
        self.postprocessing = parser.get_parsed_content("infer#postprocessing")

    @torch.no_grad()
    def infer(self, image_file: str | os.PathLike[str] | Mapping[str, Any], **kwargs: Any) -> MetaTensor:
        """Class probabilities of one image.

        Args:
            image_file: an image path or an item ``{"image": path, ...}`` (what the ensembler passes).
            kwargs: ignored (callers of other templates' ``infer`` pass e.g. ``save_mask``).

        Returns:
            ``(K, H, W, D)`` float32 probabilities on the CPU, summing to 1 over K, in the input image's grid (shape,
            affine and file name in its meta data).
        """
        item = dict(image_file) if isinstance(image_file, Mapping) else {"image": os.fspath(image_file)}
        batch = list_data_collate([self.preprocessing(item)])
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            batch["pred"] = self.inferer(batch["image"].to(self.device), self.network)
        out = self.postprocessing(decollate_batch(batch)[0])
        return out["pred"].float().cpu()
