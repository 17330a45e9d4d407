# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""A short nnU-Net trainer for the CPU tests (imported by dotted path in the training subprocess; needs nnunetv2)."""

from __future__ import annotations

from copy import deepcopy

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

__all__ = ["nnUNetTrainerTiny"]

CPU = torch.device("cpu")


class nnUNetTrainerTiny(nnUNetTrainer):  # noqa: N801 (nnU-Net's naming: the class name names the output folder)
    """nnU-Net's trainer on a tiny budget: 2 epochs of 3 iterations (1 validation iteration), 8 x 32 x 32 patches, and
    the planned U-Net with 4 features at the first stage (doubling to at most 16), so a fold trains in seconds on CPU.

    Inference builds the same network (this class's :meth:`build_network_architecture`) from the saved plans.
    """

    def __init__(
        self, plans: dict, configuration: str, fold: int, dataset_json: dict, device: torch.device = CPU
    ) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 2
        self.num_iterations_per_epoch = 3
        self.num_val_iterations_per_epoch = 1
        if len(self.configuration_manager.patch_size) == 3:
            self.configuration_manager.configuration["patch_size"] = [8, 32, 32]

    @staticmethod
    def build_network_architecture(
        plans_manager: PlansManager,
        configuration_manager: ConfigurationManager,
        num_input_channels: int,
        num_output_channels: int,
        enable_deep_supervision: bool = True,
    ) -> torch.nn.Module:
        kwargs = deepcopy(configuration_manager.network_arch_init_kwargs)
        kwargs["features_per_stage"] = [min(4 * 2**i, 16) for i in range(len(kwargs["features_per_stage"]))]
        return get_network_from_plans(
            configuration_manager.network_arch_class_name,
            kwargs,
            configuration_manager.network_arch_init_kwargs_req_import,
            num_input_channels,
            num_output_channels,
            allow_init=True,
            deep_supervision=enable_deep_supervision,
        )
