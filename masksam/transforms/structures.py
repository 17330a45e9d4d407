# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Writing the masks of prompted structures: one label map file per structure."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, SaveImage

from masksam.engines.folder_inference import NewFilesLayout

__all__ = ["SaveStructuresd"]


class SaveStructuresd(MapTransform):
    """Save each channel of a per-structure mask ``(M, H, W, D)`` as its own label map.

    Channel ``m`` becomes ``<name>_structure<v>_<postfix>.nii.gz`` (``v``: the structure's value from
    ``structures_key``, e.g. the ``label`` of its prompt file; else ``m + 1``) holding ``v`` inside the structure and 0
    elsewhere, written by MONAI's ``SaveImage`` with the mask's meta data (so after ``Invertd``, in the input's grid).
    An existing file is never replaced: :class:`~masksam.engines.OutputExistsError` (folder inference then reports
    the case as skipped).

    Args:
        keys: the mask key(s).
        output_dir: where the files go.
        structures_key: key of the structures' values (a list of ``M`` ints).
        output_postfix: the name's postfix.
        data_root_dir: kept sub-folders below this root (as ``SaveImage``), so equal names in two folders never collide.
        output_dtype: data type of the written maps.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str,
        structures_key: str = "prompt_structures",
        output_postfix: str = "seg",
        data_root_dir: str = "",
        output_dtype: Any = np.uint8,
    ) -> None:
        super().__init__(keys)
        self.output_dir, self.structures_key, self.output_postfix = output_dir, structures_key, output_postfix
        self.data_root_dir, self.output_dtype = data_root_dir, output_dtype

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            mask = d[key]
            values = [int(v) for v in d.get(self.structures_key) or range(1, mask.shape[0] + 1)]
            if len(values) != mask.shape[0]:
                raise ValueError(
                    f"{key!r} has {mask.shape[0]} structures but {self.structures_key!r} names {len(values)}"
                )
            for m, value in enumerate(values):
                layout = NewFilesLayout(
                    output_dir=self.output_dir,
                    postfix=f"structure{value}_{self.output_postfix}",
                    extension=".nii.gz",
                    parent=False,
                    makedirs=True,
                    data_root_dir=self.data_root_dir,
                )
                saver = SaveImage(output_dtype=self.output_dtype, resample=False, folder_layout=layout)
                saver((mask[m : m + 1] > 0).to(torch.uint8) * value)
        return d
