# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Auto3DSeg ``BundleAlgo`` classes of this package's algorithm templates.

The classes live in the package, not in the templates' ``scripts/algo.py`` (which re-export them): a template
folder is imported by Auto3DSeg as a top-level package named after the algorithm, and the ``masksam`` template
cannot be imported under the name of this package.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from copy import deepcopy
from typing import Any

from monai.apps.auto3dseg import BundleAlgo
from monai.bundle import ConfigParser

from masksam.auto3dseg.config import STOCK_ALIASES
from masksam.auto3dseg.heuristics import (
    datastats_value,
    median_resampled_shape,
    target_spacing,
    template_settings,
    validation_interval,
)
from masksam.auto3dseg.method_heuristics import MA_SAM_SLICES, num_queries, num_slices
from masksam.auto3dseg.progress import read_best_score
from masksam.auto3dseg.registration import bundle_dir

__all__ = ["TemplateAlgo", "MasksamAlgo", "MasamAlgo", "INPUT_KEYS", "SECTIONS", "compose_config"]

logger = logging.getLogger(__name__)

#: ``input.yaml`` keys that belong to AutoRunner/DataAnalyzer; the other keys are settings of the algorithms.
INPUT_KEYS = frozenset(
    {
        "name", "task", "modality", "datalist", "dataroot", "multigpu", "class_names", "sigmoid", "num_fold",
        "work_dir", "algos", "templates_path_or_url", "analyze", "algo_gen", "train", "hpo", "hpo_backend",
        "ensemble", "not_use_cache", "allow_skip", "mlflow_tracking_uri", "mlflow_experiment_name",
    }
)  # fmt: skip


#: Sections of a generated config taken from the bundle's other configs: merged over the config by the scripts
#: under torchrun (``multi_gpu``) and for validation (``evaluate``).
SECTIONS = {"multi_gpu": "multi_gpu_train.yaml", "evaluate": "evaluate.yaml"}


def compose_config(bundle: str | os.PathLike[str], overrides: dict[str, Any]) -> ConfigParser:
    """The bundle's ``configs/train.yaml`` with ``overrides`` merged over it (``#`` paths set nested keys), and the
    bundle's other configs as the sections of :data:`SECTIONS`.

    Args:
        bundle: the bundle folder (:func:`~masksam.auto3dseg.registration.bundle_dir`).
        overrides: the template's keys.
    """
    configs = os.path.join(os.fspath(bundle), "configs")
    parser = ConfigParser(globals=False)
    parser.read_config(os.path.join(configs, "train.yaml"))
    for key, value in overrides.items():
        parser[key] = deepcopy(value)
    for section, file in SECTIONS.items():
        parser[section] = ConfigParser.load_config_file(os.path.join(configs, file))
    return parser


def _num_folds(inputs: dict[str, Any]) -> int:
    """Folds of the datalist Auto3DSeg wrote (its items carry ``fold``), else ``num_fold`` of the input, else 5."""
    datalist = inputs.get("datalist")
    if datalist and os.path.isfile(str(datalist)):
        folds = {
            item["fold"] for item in ConfigParser.load_config_file(str(datalist)).get("training", []) if "fold" in item
        }
        if folds:
            return len(folds)
    return int(inputs.get("num_fold", 5))


def _plain(parser: ConfigParser, key: str) -> bool:
    """Whether ``key`` is a plain setting of the config (a value, not a section, expression or reference)."""
    if key not in parser:
        return False
    value = parser[key]
    return not isinstance(value, dict) and not (isinstance(value, str) and value.startswith(("$", "@", "%")))


class TemplateAlgo(BundleAlgo):
    """``BundleAlgo`` of this package's templates: one ``configs/hyper_parameters.yaml`` filled from the statistics.

    ``fill_template_config`` composes the config from the bundle's (:func:`compose_config`: the bundle's
    ``train.yaml`` with the template's keys over it), then writes the data-driven settings of
    :func:`~masksam.auto3dseg.heuristics.template_settings` (plus :meth:`extra_settings`: the method's own, e.g.
    ``num_slices`` by :attr:`slice_rule`), then overrides, in increasing priority: ``input.yaml`` keys that are
    plain settings of the config (values, not sections or ``$``/``@`` expressions, which other algorithms' keys of
    the same name must not replace), the ``input.yaml`` section named after the algorithm (any key, e.g.
    ``masksam: {backbone: vit_l}``), and the keyword arguments of ``export_to_disk`` (``fold``; HPO parameters).
    Keys that are not settings of the composed config (another method's) are never written. The inferer built by
    :meth:`get_inferer` is kept, so ensembling several images loads the weights once. No state beyond
    ``BundleAlgo.state_dict()`` (the kept inferer is not serialised).

    Args:
        template_path: the folder holding the template folder ``<name>/`` (Auto3DSeg convention).
    """

    config_file = "hyper_parameters.yaml"
    #: the bundle (under ``bundles/``) the template builds on
    bundle = "masksam"
    #: multiple of the in-plane patch size, by backbone (the encoder's patch size; LiteMedSAM's stride is 64)
    patch_multiples = {"lite_medsam": 64}
    #: keyword arguments of :func:`~masksam.auto3dseg.method_heuristics.num_slices` giving the method's slices per
    #: patch ``num_slices``; None: the method has no such setting
    slice_rule: Mapping[str, Any] | None = None

    def __init__(self, template_path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(template_path)
        self._inferer: Any = None
        self._inferer_key: str | None = None

    def _input_config(self) -> dict[str, Any]:
        if self.data_list_file and os.path.isfile(str(self.data_list_file)):
            return dict(ConfigParser.load_config_file(str(self.data_list_file)) or {})
        return {}

    def pre_check_skip_algo(self, skip_bundlegen: bool = False, skip_info: str = "") -> tuple[bool, str]:
        """Skip multi-label tasks (``sigmoid: true`` in ``input.yaml``): the templates predict exclusive classes."""
        if self._input_config().get("sigmoid", False) is True:
            return True, f"{type(self).__name__} segments mutually exclusive classes (softmax); input has sigmoid: true"
        return skip_bundlegen, skip_info

    def extra_settings(self, settings: dict[str, Any], stats: Mapping[str, Any]) -> dict[str, Any]:
        """Method-specific settings from the generic ones (with ``input.yaml``'s overrides) and the statistics.

        Here ``num_slices`` by :attr:`slice_rule` when the method has one: from the median depth and the anisotropy
        at ``settings["spacing"]``, or of the median volume as it is when ``spacing`` is None (each volume's own
        grid). Subclasses add theirs (:mod:`masksam.auto3dseg.method_heuristics`). Only settings of the method's
        bundle may be returned (others are dropped with a warning).
        """
        if self.slice_rule is None:
            return {}
        spacing = settings["spacing"]
        if spacing is None:
            spacing = target_spacing(datastats_value(stats, "stats_summary#image_stats#spacing#median"))
        depth = median_resampled_shape(stats, spacing)[2]
        return {"num_slices": num_slices(depth, spacing[2] / spacing[0], **self.slice_rule)}

    def fill_template_config(self, data_stats_filename: str, algo_path: str, **kwargs: Any) -> dict:
        """Fill ``<algo_path>/configs/hyper_parameters.yaml``; returns ``{"hyper_parameters.yaml": {key: value}}``.

        Args:
            data_stats_filename: ``datastats.yaml`` written by DataAnalyzer.
            algo_path: the generated algorithm folder.
            kwargs: settings that override everything (``fold`` from BundleGen, HPO parameters);
                ``fill_with_datastats=False`` reuses the previous records instead of the statistics;
                ``gpu_customization`` and its specs are not supported and ignored.
        """
        for unsupported in ("gpu_customization", "gpu_customization_specs"):
            if kwargs.pop(unsupported, None):
                logger.warning("%s: %s is not supported, ignored", type(self).__name__, unsupported)
        config_path = os.path.join(algo_path, "configs", self.config_file)
        parser = compose_config(bundle_dir(self.bundle, self.template_path), ConfigParser.load_config_file(config_path))

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
        if parser["sam_checkpoint"] is None and parser["backbone"] != "tiny":
            logger.warning(
                "%s: no sam_checkpoint in input.yaml: the SAM backbone starts from random weights", self.name
            )
        config = {k: v for k, v in parser.get().items() if k != "_meta_" or v}  # ConfigParser adds an empty _meta_
        ConfigParser.export_config_file(config, config_path, fmt="yaml", default_flow_style=None, sort_keys=False)
        return {self.config_file: values}

    def settings(self, data_stats_filename: str, parser: ConfigParser) -> dict[str, Any]:
        """Statistics-driven settings, then the ``input.yaml`` overrides (top level, then the algorithm's section).

        Args:
            data_stats_filename: ``datastats.yaml``.
            parser: the template config (read for its defaults, e.g. the backbone).
        """
        if not data_stats_filename or not os.path.isfile(str(data_stats_filename)):
            raise FileNotFoundError(f"DataAnalyzer statistics not found: {data_stats_filename!r}")
        stats = ConfigParser.load_config_file(str(data_stats_filename))
        inputs = self._input_config()
        if "modality" not in inputs:
            raise ValueError(f"input config {self.data_list_file!r} has no 'modality' (e.g. CT or MRI)")
        overrides = {k: v for k, v in inputs.items() if k not in INPUT_KEYS and k != self.name and _plain(parser, k)}
        section = inputs.get(self.name) if self.name else None
        if isinstance(section, dict):
            overrides.update(section)
        backbone = overrides.get("backbone", parser["backbone"])
        settings = template_settings(
            stats,
            inputs["modality"],
            num_folds=_num_folds(inputs),
            patch_multiple=self.patch_multiples.get(backbone, 16),
        )
        settings.update(self.extra_settings({**settings, **overrides}, stats))
        if "dataroot" in inputs:
            settings["dataset_dir"] = os.path.abspath(str(inputs["dataroot"]))
        if "datalist" in inputs:
            settings["datalist"] = os.path.abspath(str(inputs["datalist"]))
        if "max_epochs" in overrides and "val_interval" not in overrides:
            settings["val_interval"] = validation_interval(int(overrides["max_epochs"]))
        settings.update(overrides)
        return settings

    def record_training_params(self, train_params: Mapping[str, Any]) -> dict[str, Any]:
        """Write the training parameters that are settings of the fold's config into ``configs/<config_file>``.

        ``AutoRunner.set_training_params`` reaches the training script as command-line overrides only; written
        into the fold's config as well (stock names such as ``num_epochs`` mapped by
        :data:`~masksam.auto3dseg.config.STOCK_ALIASES`), the folder says what was trained, and re-running its
        ``scripts/train.py`` by hand trains the same. Parameters that are not plain settings of the config
        (another algorithm's, or sections and expressions) are left out.

        Returns:
            the settings written, by config key.
        """
        config_path = os.path.join(self.output_path, "configs", self.config_file)
        parser = ConfigParser(globals=False)
        parser.read_config(config_path)
        written = {}
        for key, value in train_params.items():
            target = STOCK_ALIASES.get(key, key)
            if _plain(parser, target):
                parser[target] = deepcopy(value)
                written[target] = value
        if written:
            config = {k: v for k, v in parser.get().items() if k != "_meta_" or v}
            ConfigParser.export_config_file(config, config_path, fmt="yaml", default_flow_style=None, sort_keys=False)
            logger.info("%s: training parameters written into %s: %s", self.name, config_path, written)
        return written

    def train(self, train_params: dict | None = None, device_setting: dict | None = None) -> Any:
        """``BundleAlgo.train`` after :meth:`record_training_params` (the fold's config keeps what is trained)."""
        if train_params:
            self.record_training_params(train_params)
        return super().train(train_params, device_setting)

    def get_score(self, *args: Any, **kwargs: Any) -> float:
        """Best validation mean Dice from ``progress.yaml`` in the algorithm folder's ``ckpt_path``."""
        parser = ConfigParser()
        parser.read_config(os.path.join(self.output_path, "configs", self.config_file))
        parser["bundle_root"] = self.output_path  # the folder may have moved since generation
        return read_best_score(parser.get_parsed_content("ckpt_path"))

    def get_inferer(self, *args: Any, **kwargs: Any) -> Any:
        """The ``InferClass`` of ``scripts/infer.py``, built once per set of arguments (weights load once)."""
        key = repr((args, sorted(kwargs.items())))
        if self._inferer is None or key != self._inferer_key:
            self._inferer = super().get_inferer(*args, **kwargs)
            self._inferer_key = key
        return self._inferer


class MasksamAlgo(TemplateAlgo):
    """Auto3DSeg algorithm ``masksam``: the MaskSAM bundle (:func:`masksam.networks.build_masksam`) on one fold.

    Adds MaskSAM's own settings to the generic ones: slices per patch from the depth and anisotropy
    (:func:`~masksam.auto3dseg.method_heuristics.num_slices`) and queries from the classes
    (:func:`~masksam.auto3dseg.method_heuristics.num_queries`).
    """

    bundle = "masksam"
    slice_rule: Mapping[str, Any] | None = {}  # the reference recipe: 9 slices at 3x anisotropy

    def extra_settings(self, settings: dict[str, Any], stats: Mapping[str, Any]) -> dict[str, Any]:
        return {**super().extra_settings(settings, stats), "num_queries": num_queries(int(settings["num_classes"]))}


class MasamAlgo(TemplateAlgo):
    """Auto3DSeg algorithm ``masam``: the MA-SAM bundle (:func:`masksam.networks.build_ma_sam`) on one fold.

    Adds MA-SAM's own setting to the generic ones: the paper's stacks of
    :data:`~masksam.auto3dseg.method_heuristics.MA_SAM_SLICES` slices whatever the spacing, fewer only in volumes
    thinner than that (:func:`~masksam.auto3dseg.method_heuristics.num_slices`). It writes nothing the MA-SAM
    bundle lacks (no queries). Inference averages the softmax of overlapping slice windows
    (:class:`masksam.inferers.SliceWindowInferer`), already probabilities over K classes, background included.
    """

    bundle = "ma_sam"
    slice_rule: Mapping[str, Any] | None = {"reference_slices": MA_SAM_SLICES, "reference_anisotropy": None}
