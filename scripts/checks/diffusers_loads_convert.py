#!/usr/bin/env python3
"""Checks that a folder `kiln convert` wrote loads in diffusers 0.42.1 as it is
(`DiffusionPipeline.from_pretrained`) and draws what diffusers' `from_single_file` drew from the
checkpoint (the pictures of scripts/fixtures/single_file.py). Run by hand (CI has no Python):

    kiln convert assets/fixtures/single_file/sd1.ckpt /tmp/sd1 --config assets/fixtures/models/sd1 [--fp16-variant]
    ~/.venvs/ref/bin/python scripts/checks/diffusers_loads_convert.py /tmp/sd1 [fp16]
"""

import os
import sys

import numpy as np
import torch
from PIL import Image

import diffusers

assert diffusers.__version__ == "0.42.1", diffusers.__version__
diffusers.utils.logging.set_verbosity_error()

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
folder = sys.argv[1]
variant = sys.argv[2] if len(sys.argv) > 2 else None
pipe = diffusers.DiffusionPipeline.from_pretrained(folder, variant=variant, torch_dtype=torch.float32)
pipe.set_progress_bar_config(disable=True)
image = pipe(prompt="a red circle on a blue background", num_inference_steps=5, guidance_scale=7.5, width=64, height=48,
             generator=torch.Generator("cpu").manual_seed(0)).images[0]
want = np.asarray(Image.open(os.path.join(ROOT, "assets", "fixtures", "single_file", "sd1-ckpt.png")), dtype=np.int16)
diff = np.abs(np.asarray(image, dtype=np.int16) - want).max()
print(f"{type(pipe).__name__} from {folder}: {diff} levels from from_single_file's picture")
assert diff <= 1, diff
