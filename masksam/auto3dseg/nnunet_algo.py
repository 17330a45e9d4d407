# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Auto3DSeg algorithm ``nnunet``: nnU-Net v2 as one more algorithm of an Auto3DSeg run (optional extra ``nnunet``)."""

from __future__ import annotations

import logging
import os
from copy import deepcopy
from typing import Any

from monai.bundle import ConfigParser

from masksam.auto3dseg.algo import INPUT_KEYS, TemplateAlgo, _plain
from masksam.auto3dseg.nnunet_data import NnunetPaths, prepare_nnunet_dataset

__all__ = ["NnunetAlgo"]

logger = logging.getLogger(__name__)


class NnunetAlgo(TemplateAlgo):
    """Auto3DSeg algorithm ``nnunet``: one fold of nnU-Net v2 (``algorithm_templates/nnunet``).

    ``fill_template_config`` writes the fold's ``configs/hyper_parameters.yaml`` from the template's (no MaskSAM
    bundle is involved): the fold, ``input.yaml``'s modality, data root and datalist, then overrides in increasing
    priority (``input.yaml`` keys that are plain settings of the config, the ``nnunet:`` section of ``input.yaml``,
    ``export_to_disk``'s keyword arguments). It then makes nnU-Net's dataset
    (:func:`~masksam.auto3dseg.nnunet_data.prepare_nnunet_dataset`: MONAI's conversion of the datalist, nnU-Net's
    fingerprint, plans and preprocessing of ``configuration``, ``splits_final.json`` from the datalist's folds) the
    first time, shared by the folds under ``nnunet_dir``, and records the plans identifier and the number of classes.
    Training, scoring (``progress.yaml`` under ``ckpt_path``) and the kept ``InferClass`` are as for the other
    templates (:class:`~masksam.auto3dseg.algo.TemplateAlgo`).

    Args:
        template_path: the folder holding the template folder ``nnunet/`` (Auto3DSeg convention).
    """

    def fill_template_config(self, data_stats_filename: str, algo_path: str, **kwargs: Any) -> dict:
        """Fill ``<algo_path>/configs/hyper_parameters.yaml`` and prepare nnU-Net's dataset; returns the records.

        Args:
            data_stats_filename: ``datastats.yaml`` (not read: nnU-Net makes its own fingerprint of the data).
            algo_path: the generated algorithm folder.
            kwargs: settings that override everything (``fold`` from BundleGen); ``fill_with_datastats=False``
                reuses the previous records; ``gpu_customization`` is not supported and ignored.
        """
        for unsupported in ("gpu_customization", "gpu_customization_specs"):
            if kwargs.pop(unsupported, None):
                logger.warning("%s: %s is not supported, ignored", type(self).__name__, unsupported)
        config_path = os.path.join(algo_path, "configs", self.config_file)
        parser = ConfigParser(globals=False)
        parser.read_config(config_path)
        if kwargs.pop("fill_with_datastats", True):
            values = self.settings(data_stats_filename, parser)
            values["bundle_root"] = os.path.abspath(algo_path)
        else:
            values = deepcopy(self.fill_records.get(self.config_file, {}))
        values.update(kwargs)
        ignored = sorted(k for k in values if k not in parser)
        if ignored:
            logger.warning("%s: not settings of %s, ignored: %s", type(self).__name__, self.config_file, ignored)
        values = {k: v for k, v in values.items() if k not in ignored}
        for key, value in values.items():
            parser[key] = deepcopy(value)

        resolved = ConfigParser(deepcopy(parser.get()), globals={})
        get = resolved.get_parsed_content
        if get("datalist") is None or get("dataset_dir") is None:
            raise ValueError(f"{self.name}: no datalist or dataroot in input config {self.data_list_file!r}")
        paths = NnunetPaths(get("nnunet_raw"), get("nnunet_preprocessed"), get("nnunet_results"), get("num_processes"))
        prepared = prepare_nnunet_dataset(
            paths,
            get("datalist"),
            get("dataset_dir"),
            str(get("modality")),
            str(get("configuration")),
            dataset_id=int(get("dataset_id")),
            dataset_name=str(get("dataset_name")),
            planner=str(get("planner")),
            gpu_memory_target=get("gpu_memory_target"),
        )
        for key in ("plans", "num_classes"):
            parser[key] = values[key] = prepared[key]
        config = {k: v for k, v in parser.get().items() if k != "_meta_" or v}  # ConfigParser adds an empty _meta_
        ConfigParser.export_config_file(config, config_path, fmt="yaml", default_flow_style=None, sort_keys=False)
        return {self.config_file: values}

    def settings(self, data_stats_filename: str, parser: ConfigParser) -> dict[str, Any]:
        """``input.yaml``'s modality, data root and datalist, then its overrides (top level, then ``nnunet:``).

        Args:
            data_stats_filename: ``datastats.yaml`` (unused: nnU-Net analyses the data itself).
            parser: the template config (its keys decide which top-level ``input.yaml`` keys apply).
        """
        inputs = self._input_config()
        for key in ("modality", "datalist", "dataroot"):
            if key not in inputs:
                raise ValueError(f"input config {self.data_list_file!r} has no {key!r}")
        settings: dict[str, Any] = {
            "modality": str(inputs["modality"]).lower(),
            "dataset_dir": os.path.abspath(str(inputs["dataroot"])),
            "datalist": os.path.abspath(str(inputs["datalist"])),
        }
        settings.update(
            {k: v for k, v in inputs.items() if k not in INPUT_KEYS and k != self.name and _plain(parser, k)}
        )
        section = inputs.get(self.name) if self.name else None
        if isinstance(section, dict):
            settings.update(section)
        return settings
