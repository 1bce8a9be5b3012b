#!/usr/bin/env python3
"""kiln's f16 UNet against PyTorch's on the same random weights and inputs.

    python scripts/gpu/unet_check.py write DIR [--preset sd15] [--size 512] [--device cuda] [--dtype f16|bf16]
    kiln bench --unet-check DIR --device vulkan --dtype f16
    python scripts/gpu/unet_check.py compare DIR

`write` builds UNet2DConditionModel from crates/kiln-pipeline/configs/<preset>/unet with seeded random weights,
saves it to DIR/unet (f16 safetensors, as published models are; bf16 with --dtype bf16), draws
the inputs, runs PyTorch in that half precision and in f32 on the same weights, and writes
DIR/io.safetensors. `compare` reads kiln's DIR/kiln_out.safetensors and prints the errors of
kiln and of torch's half-precision run against torch-f32 (the reference both approximate); it
fails when kiln's error exceeds 4× torch's own half-precision error or 5e-2 relative. On the CPU
(`kiln bench --unet-check DIR`, f32 activations over the half-precision weights as loaded) this
measures kiln's half-precision weight path (docs/performance.md).
"""

import json
import os
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from diffusers import UNet2DConditionModel

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def write(d, preset="sd15", size=512, device="cuda", dtype="f16"):
    os.makedirs(d, exist_ok=True)
    torch.manual_seed(0)
    half = {"f16": torch.float16, "bf16": torch.bfloat16}[dtype]
    config = UNet2DConditionModel.load_config(os.path.join(ROOT, "crates", "kiln-pipeline", "configs", preset, "unet"))
    unet = UNet2DConditionModel.from_config(config).to(half)
    unet.save_pretrained(os.path.join(d, "unet"))
    g = torch.Generator("cpu").manual_seed(1)
    f = size // 8
    sample = torch.randn((2, unet.config.in_channels, f, f), generator=g)
    ctx_dim = unet.config.cross_attention_dim
    ctx = torch.randn((2, 77, ctx_dim), generator=g)
    t = torch.tensor([500.0])
    if unet.config.addition_embed_type is not None:
        sys.exit("unet_check covers UNets without added conditioning (sd15, sd21)")
    with torch.no_grad():
        u16 = unet.to(device)
        out16 = u16(sample.to(device, half), t.to(device), encoder_hidden_states=ctx.to(device, half)).sample.float().cpu()
        u32 = unet.float()
        out32 = u32(sample.to(device), t.to(device), encoder_hidden_states=ctx.to(device)).sample.cpu()
    # "torch_f16": torch's run in the weights' half precision (f16 or bf16, the metadata says)
    save_file({"sample": sample, "encoder_hidden_states": ctx, "timestep": t, "torch_f16": out16, "torch_f32": out32},
              os.path.join(d, "io.safetensors"), metadata={"half": dtype})
    print(f"wrote {d}: {preset} UNet, sample {list(sample.shape)}")


def compare(d):
    io = load_file(os.path.join(d, "io.safetensors"))
    kiln = load_file(os.path.join(d, "kiln_out.safetensors"))["out"]
    ref, t16 = io["torch_f32"], io["torch_f16"]
    scale = ref.abs().max().item()
    err_kiln = (kiln - ref).abs().max().item() / scale
    err_torch = (t16 - ref).abs().max().item() / scale
    finite = bool(torch.isfinite(kiln).all())
    with safe_open(os.path.join(d, "io.safetensors"), "pt") as f:
        half = (f.metadata() or {}).get("half", "f16")
    result = dict(half=half, kiln_vs_torch_f32=err_kiln, torch_half_vs_torch_f32=err_torch, kiln_vs_torch_half=(kiln - t16).abs().max().item() / scale,
                  finite=finite, ok=finite and err_kiln <= max(4 * err_torch, 1e-3) and err_kiln <= 5e-2)
    print(json.dumps(result, indent=1))
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    cmd, d = sys.argv[1], sys.argv[2]
    if cmd == "write":
        kw = {}
        args = sys.argv[3:]
        for i in range(0, len(args), 2):
            kw[args[i].lstrip("-")] = int(args[i + 1]) if args[i] == "--size" else args[i + 1]
        write(d, **kw)
    else:
        compare(d)
