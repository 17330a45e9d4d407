# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Auto3DSeg algorithm template ``masksam`` (``configs/`` + ``scripts/``, copied to ``work_dir/masksam_<fold>``).

Auto3DSeg puts the folder holding this template on ``sys.path``, where it would shadow the installed package of the
same name. It is never meant to be imported as the top-level ``masksam`` (the algorithm class is
``masksam.auto3dseg.MasksamAlgo``); refusing with ``ModuleNotFoundError`` lets MONAI's ``algo_from_json`` go on to
its next search path, where the installed package is found.
"""

if __name__ == "masksam":
    raise ModuleNotFoundError(
        f"{__file__} is the Auto3DSeg template folder, not the masksam package; import masksam before Auto3DSeg "
        "puts the template folder on sys.path",
        name=__name__,
    )
