# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""The bundles are self-contained (the Model Zoo runs a bundle folder alone), so the configs they share are
copies: these tests fail as soon as a copy drifts from the others outside the method's own sections."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.bundles.conftest import REPO

BUNDLES = sorted(p.name for p in (REPO / "bundles").iterdir() if (p / "configs" / "metadata.json").is_file())

#: Files every bundle carries unchanged.
IDENTICAL = ("evaluate.yaml", "multi_gpu_train.yaml", "logging.conf")

#: Keys (``#``-joined below ``train`` and ``validate``) that are a method's own: its network, loss, schedule,
#: augmentations, inferer and their settings. Everything else must be equal across bundles.
METHOD_KEYS = {
    "train.yaml": {
        "dataset_dir", "seed", "backbone", "num_classes", "patch_size", "num_slices", "roi_size", "modality",
        "spacing", "ct_window", "batch_size", "num_samples", "rotate90_prob", "val_overlap", "max_epochs",
        "learning_rate", "weight_decay", "network_def", "trained_network", "loss", "optimizer", "lr_scheduler",
        "train#crop_transforms", "train#handlers", "validate#inferer", "iterations_per_epoch", "mirror_tta",
        # MaskSAM
        "num_queries", "encoder_adapter_dim", "decoder_adapter_dim", "generator_widths", "mask_head_channels",
        "query_chunk_size", "grad_clip_norm", "num_points",
        # MA-SAM
        "fact_rank", "fact_dropout", "adapter_dim", "flip_prob", "rotate_prob", "intensity_prob", "augment_ops",
        "slice_stride",
        "warmup_iterations", "lr_power",
        # Med-SA (prompted: prompts simulated in training, a named protocol in validation, extra batch keys)
        "adapter_ratio", "depth_attention", "hyper_hidden_dim", "train_decoder", "num_positive",
        "num_negative", "box_prob", "box_noise_fraction", "box_noise_max", "correction_clicks", "prompt_protocol",
        "prompt_seed", "val_num_points", "lr_step_epochs", "lr_gamma", "model_space_transforms",
        "pos_neg_ratio", "train#stack_transforms", "train#inferer", "train#prepare_batch", "train#trainer",
        "validate#preprocessing", "validate#prompt_transforms", "validate#prepare_batch", "validate#evaluator",
        # the per-case CSV rows of evaluate.yaml (the prompted bundles add the protocol)
        "metrics_batch_transform",
        # SAM-UNet (2D slices, a ResNet branch, box prompts, epoch milestones)
        "cnn", "cnn_checkpoint", "train_prompt_encoder", "lr_milestones", "sw_batch_size",
    },
    "inference.yaml": {
        "dataset_dir", "backbone", "num_classes", "patch_size", "num_slices", "roi_size", "spacing", "ct_window",
        "overlap", "network_def", "inferer", "mirror_tta",
        "num_queries", "encoder_adapter_dim", "decoder_adapter_dim", "generator_widths", "mask_head_channels",
        "query_chunk_size",
        "fact_rank", "fact_dropout", "adapter_dim", "slice_stride",
        # Med-SA: prompts from a file beside each image, one label map per structure
        "adapter_ratio", "depth_attention", "hyper_hidden_dim", "train_decoder", "num_points", "modality",
        "in_channels", "preprocessing", "load_transforms", "model_space_transforms", "dataset", "prepare_batch",
        "postprocessing", "evaluator", "save_probabilities", "mirror_axes",
        # SAM-UNet: one slice per stack, a ResNet branch
        "cnn", "train_prompt_encoder", "sw_batch_size",
    },
}  # fmt: skip


def flatten(config: dict[str, Any]) -> dict[str, Any]:
    """Top-level keys, with the ``train`` and ``validate`` sections split one level (``train#handlers``...)."""
    flat = {}
    for key, value in config.items():
        if key in ("train", "validate") and isinstance(value, dict):
            flat.update({f"{key}#{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def load(bundle: str, name: str) -> dict[str, Any]:
    return flatten(yaml.safe_load((REPO / "bundles" / bundle / "configs" / name).read_text()))


def test_there_are_bundles_to_compare() -> None:
    assert {"masksam", "ma_sam"} <= set(BUNDLES)


@pytest.mark.parametrize("name", IDENTICAL)
def test_shared_files_are_identical(name: str) -> None:
    texts = {b: (REPO / "bundles" / b / "configs" / name).read_text() for b in BUNDLES}
    reference = texts[BUNDLES[0]]
    drifted = [b for b, t in texts.items() if t != reference]
    assert drifted == [], f"configs/{name} of {drifted} differs from {BUNDLES[0]}'s: copy the change to every bundle"


@pytest.mark.parametrize("name", sorted(METHOD_KEYS))
def test_configs_differ_only_in_the_methods_own_keys(name: str) -> None:
    configs = {b: load(b, name) for b in BUNDLES}
    reference = configs[BUNDLES[0]]
    for bundle, config in configs.items():
        shared = (set(reference) | set(config)) - METHOD_KEYS[name]
        drifted = sorted(k for k in shared if reference.get(k, "<absent>") != config.get(k, "<absent>"))
        assert drifted == [], f"configs/{name}: {bundle} and {BUNDLES[0]} differ in shared keys {drifted}"
