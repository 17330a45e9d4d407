# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Training, validation and inference of one ``nnunet`` algorithm fold with nnU-Net v2's own trainer and predictor.

What the ``nnunet`` template's ``scripts/train.py``, ``validate.py`` and ``infer.py`` run. The fold's config
(``configs/hyper_parameters.yaml``, filled by :class:`~masksam.auto3dseg.nnunet_algo.NnunetAlgo`) names nnU-Net's
folders; each call sets nnU-Net's environment variables for itself only (:func:`nnunet_environment`).
``nnunetv2`` is imported inside the functions (the optional extra ``nnunet``).
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from monai.data import MetaTensor
from monai.transforms import LoadImage

from masksam.auto3dseg.config import apply_overrides, read_algo_config
from masksam.auto3dseg.nnunet_data import NnunetPaths, dataset_folder_name, nnunet_environment
from masksam.auto3dseg.progress import write_progress

__all__ = [
    "TRAINER_SETTINGS",
    "NnunetFold",
    "resolve_trainer_class",
    "run_nnunet_training",
    "run_nnunet_validation",
    "NnunetInferer",
]

logger = logging.getLogger(__name__)

ConfigFiles = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]

#: Config keys -> attributes of nnU-Net's trainer they set (None in the config: the trainer's own value).
TRAINER_SETTINGS = {
    "max_epochs": "num_epochs",
    "iterations_per_epoch": "num_iterations_per_epoch",
    "val_iterations_per_epoch": "num_val_iterations_per_epoch",
}


def resolve_trainer_class(name: str) -> type:
    """nnU-Net trainer class from a dotted import path (``my_pkg.trainers.MyTrainer``) or a class name that nnU-Net
    itself finds in ``nnunetv2.training.nnUNetTrainer`` (e.g. ``nnUNetTrainer_250epochs``).

    Raises:
        ValueError: the class is not found or is not an ``nnUNetTrainer``; the message names the setting.
    """
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    try:
        if "." in name:
            module, _, attr = name.rpartition(".")
            cls = getattr(importlib.import_module(module), attr)
        else:
            from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

            cls = recursive_find_trainer_class_by_name(name)
    except (ImportError, AttributeError, RuntimeError) as err:
        raise ValueError(f"trainer_class {name!r} not found: {err}") from err
    if not (isinstance(cls, type) and issubclass(cls, nnUNetTrainer)):
        raise ValueError(f"trainer_class {name!r} is not an nnU-Net trainer (a subclass of nnUNetTrainer)")
    return cls


class NnunetFold:
    """The settings of one generated ``nnunet`` fold, read from its config, with nnU-Net's folders and names.

    Args:
        config_file: config paths, a list or comma-joined (``bundle_root`` follows the files).
        override: settings (``--key value``); keys that are not settings of the config are skipped, stock names
            map to ours (``num_epochs`` -> ``max_epochs``).
    """

    def __init__(self, config_file: ConfigFiles, **override: Any) -> None:
        parser = read_algo_config(config_file)
        self.applied = apply_overrides(parser, override)
        self.parser = parser
        get = parser.get_parsed_content
        self.fold = int(get("fold"))
        self.configuration = str(get("configuration"))
        self.plans = str(get("plans"))
        self.dataset = dataset_folder_name(int(get("dataset_id")), str(get("dataset_name")))
        self.trainer_name = str(get("trainer_class"))
        self.paths = NnunetPaths(
            get("nnunet_raw"),
            get("nnunet_preprocessed"),
            get("nnunet_results"),
            get("num_processes"),
            get("num_workers"),
        )
        self.ckpt_path = os.path.abspath(str(get("ckpt_path")))
        self.checkpoint_name = str(get("checkpoint_name"))
        self.export_validation_probabilities = bool(get("export_validation_probabilities"))
        self.trainer_settings = {attr: get(key) for key, attr in TRAINER_SETTINGS.items()}
        device = get("device")
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))

    def trainer_class(self) -> type:
        return resolve_trainer_class(self.trainer_name)

    def model_folder(self, trainer_class: type) -> Path:
        """``<nnUNet_results>/<dataset>/<trainer>__<plans>__<configuration>`` (plans.json, dataset.json, fold_<f>/)."""
        return Path(self.paths.results) / self.dataset / f"{trainer_class.__name__}__{self.plans}__{self.configuration}"

    def build_trainer(self, continue_training: bool) -> Any:
        """nnU-Net's trainer for this fold (call inside :func:`nnunet_environment`), with the epoch settings."""
        preprocessed = Path(self.paths.preprocessed) / self.dataset
        plans_file = preprocessed / f"{self.plans}.json"
        if not plans_file.is_file():
            raise FileNotFoundError(
                f"nnU-Net plans not found: {plans_file} (written when the algorithm is generated; nnunet_preprocessed "
                "must be the folder it was generated with)"
            )
        plans = json.loads(plans_file.read_text())
        plans["continue_training"] = continue_training
        dataset_json = json.loads((preprocessed / "dataset.json").read_text())
        trainer = self.trainer_class()(
            plans=plans, configuration=self.configuration, fold=self.fold, dataset_json=dataset_json, device=self.device
        )
        for attr, value in self.trainer_settings.items():
            if value is not None:
                setattr(trainer, attr, int(value))
        return trainer


def _foreground_dice(summary_file: Path) -> float:
    """nnU-Net's mean foreground Dice from its validation ``summary.json`` (NaN, no foreground at all: 0)."""
    value = float(json.loads(summary_file.read_text())["foreground_mean"]["Dice"])
    return value if math.isfinite(value) else 0.0


def run_nnunet_training(config_file: ConfigFiles, **override: Any) -> float:
    """Train the fold with nnU-Net's trainer, validate it the nnU-Net way, write ``progress.yaml``; returns the Dice.

    The trainer is the config's ``trainer_class`` with ``max_epochs``, ``iterations_per_epoch`` and
    ``val_iterations_per_epoch`` where set, on ``device`` (default: CUDA when available, else the CPU). An
    interrupted fold resumes from nnU-Net's latest checkpoint. After training, nnU-Net's final validation predicts
    the fold's validation cases (``<fold folder>/validation/``, ``summary.json``) and its mean foreground Dice is
    recorded in ``<ckpt_path>/progress.yaml``, which Auto3DSeg ranks the algorithms by. Under torchrun
    (``WORLD_SIZE > 1``, as Auto3DSeg launches several GPUs) the NCCL process group is initialised and nnU-Net's
    trainer runs DDP, one GPU per rank; nnU-Net's DDP needs CUDA.

    Args:
        config_file: config paths, a list or comma-joined.
        override: ``--key value`` settings (Auto3DSeg's ``num_epochs`` sets ``max_epochs``).
    """
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed and not torch.cuda.is_available():
        raise RuntimeError("nnU-Net trains on several processes only with CUDA (NCCL); train on one CPU process")
    fold = NnunetFold(config_file, **override)
    with nnunet_environment(fold.paths):
        if distributed and not dist.is_initialized():
            dist.init_process_group(backend="nccl")
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        try:
            from nnunetv2.run.run_training import maybe_load_checkpoint

            trainer = fold.build_trainer(continue_training=True)
            resume = any(
                Path(trainer.output_folder, f).is_file() for f in ("checkpoint_final.pth", "checkpoint_latest.pth")
            )
            if resume:
                maybe_load_checkpoint(trainer, continue_training=True, validation_only=False)
            trainer.run_training()
            trainer.perform_actual_validation(fold.export_validation_probabilities)
            score = float("nan")
            if trainer.local_rank == 0:
                score = _foreground_dice(Path(trainer.output_folder) / "validation" / "summary.json")
                record = {"best_avg_dice_score": score, "best_epoch": int(trainer.current_epoch)}
                write_progress(fold.ckpt_path, [{**record, "time": time.strftime("%Y-%m-%d %H:%M:%S")}])
                logger.info("fold %d: nnU-Net validation mean foreground Dice %.4f", fold.fold, score)
        finally:
            if distributed and dist.is_initialized():
                dist.destroy_process_group()
    return score


def run_nnunet_validation(config_file: ConfigFiles, **override: Any) -> float:
    """Run nnU-Net's validation of the trained fold again (its ``checkpoint_name``); returns the mean foreground Dice.

    Writes ``<fold folder>/validation/`` (predictions, ``summary.json`` with per-case and per-class Dice).
    """
    fold = NnunetFold(config_file, **override)
    with nnunet_environment(fold.paths):
        trainer = fold.build_trainer(continue_training=False)
        checkpoint = Path(trainer.output_folder) / fold.checkpoint_name
        if not checkpoint.is_file():
            raise FileNotFoundError(f"trained weights not found: {checkpoint} (has the fold been trained?)")
        trainer.load_checkpoint(str(checkpoint))
        trainer.perform_actual_validation(fold.export_validation_probabilities)
        score = _foreground_dice(Path(trainer.output_folder) / "validation" / "summary.json")
    logger.info("fold %d: nnU-Net validation mean foreground Dice %.4f", fold.fold, score)
    return score


class NnunetInferer:
    """``InferClass`` of the ``nnunet`` template: nnU-Net's predictor for the fold, built once; :meth:`infer` returns
    its softmax probabilities ``(K, H, W, D)`` in the input image's grid.

    The network is built by the fold's trainer class from the plans saved beside the weights and loaded from
    ``<fold folder>/<checkpoint_name>`` (``checkpoint_final.pth``) into ``nnunetv2``'s ``nnUNetPredictor``
    (sliding window with ``infer#tile_step_size``, Gaussian weighting, test-time mirroring when
    ``infer#use_mirroring``). Images are read as the conversion read them (MONAI's ``LoadImage``, channel first)
    and handed to nnU-Net in its own axis order (SimpleITK's: z, y, x, with the spacing reversed), and the
    probabilities come back in the image's voxel grid.

    Args:
        config_file: config paths, a list or comma-joined.
        override: settings of the config. Ensembling also passes ``rank`` (``cuda:<rank>`` when CUDA is
            available and ``device`` is not set) and keys for other purposes, which are ignored.
    """

    def __init__(self, config_file: ConfigFiles, **override: Any) -> None:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        rank = int(override.pop("rank", 0) or 0)
        if "device" not in override and torch.cuda.is_available():
            override["device"] = f"cuda:{rank % torch.cuda.device_count()}"
        fold = NnunetFold(config_file, **override)
        trainer_class = fold.trainer_class()
        folder = fold.model_folder(trainer_class)
        self.checkpoint = folder / f"fold_{fold.fold}" / fold.checkpoint_name
        if not self.checkpoint.is_file():
            raise FileNotFoundError(f"trained weights not found: {self.checkpoint} (has the fold been trained?)")
        plans_manager = PlansManager(str(folder / "plans.json"))
        dataset_json = json.loads((folder / "dataset.json").read_text())
        configuration = plans_manager.get_configuration(fold.configuration)
        network = trainer_class.build_network_architecture(
            plans_manager,
            configuration,
            determine_num_input_channels(plans_manager, configuration, dataset_json),
            plans_manager.get_label_manager(dataset_json).num_segmentation_heads,
            enable_deep_supervision=False,
        )
        # nnU-Net's checkpoints hold its training state (numpy values, tuples): trusted, written by the fold's training
        checkpoint = torch.load(self.checkpoint, map_location="cpu", weights_only=False)
        get = fold.parser.get_parsed_content
        self.predictor = nnUNetPredictor(
            tile_step_size=float(get("infer#tile_step_size")),
            use_gaussian=True,
            use_mirroring=bool(get("infer#use_mirroring")),
            perform_everything_on_device=fold.device.type == "cuda",  # nnU-Net supports it on CUDA only
            device=fold.device,
            verbose=False,
            verbose_preprocessing=False,
            allow_tqdm=False,
        )
        self.predictor.manual_initialization(
            network,
            plans_manager,
            configuration,
            [checkpoint["network_weights"]],
            dataset_json,
            checkpoint["trainer_name"],
            checkpoint.get("inference_allowed_mirroring_axes"),
        )
        self.num_classes = int(plans_manager.get_label_manager(dataset_json).num_segmentation_heads)
        self.loader = LoadImage(image_only=True, ensure_channel_first=True)
        logger.info("loaded %s", self.checkpoint)

    @torch.no_grad()
    def infer(self, image_file: str | os.PathLike[str] | Mapping[str, Any], **kwargs: Any) -> MetaTensor:
        """nnU-Net's class probabilities of one image.

        Args:
            image_file: an image path or an item ``{"image": path, ...}`` (what the ensembler passes).
            kwargs: ignored (callers of other templates' ``infer`` pass e.g. ``save_mask``).

        Returns:
            ``(K, H, W, D)`` float32 softmax probabilities on the CPU, background included, summing to 1 over K, in
            the input image's grid (its affine and file name in the meta data).
        """
        path = image_file["image"] if isinstance(image_file, Mapping) else os.fspath(image_file)
        image = self.loader(path)
        data = np.ascontiguousarray(image.numpy().transpose(0, 3, 2, 1), dtype=np.float32)
        spacing = [float(s) for s in image.pixdim[:3]][::-1]
        _, probs = self.predictor.predict_single_npy_array(data, {"spacing": spacing}, None, None, True)
        probs = torch.from_numpy(np.ascontiguousarray(np.asarray(probs).transpose(0, 3, 2, 1))).float()
        return MetaTensor(probs, meta={**image.meta, "affine": image.affine.clone()})
