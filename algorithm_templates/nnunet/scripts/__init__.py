# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
