#!/usr/bin/env python3
"""The PyTorch/diffusers side of `kiln bench`: the same components built from the same configs
(crates/kiln-pipeline/configs/<preset>, random weights) or loaded from the same model folder, the same inputs
shape for shape, the same protocol (one first call timed on its own, then N timed calls, each
followed by a device synchronisation), and the same JSON fields, so scripts/bench/compare.py can
divide kiln's times by these.

    python scripts/bench/torch_reference.py --preset sd15 --width 256 --height 256 --device cpu --dtype fp32
    python scripts/bench/torch_reference.py --preset sdxl --width 1024 --height 1024 --device cuda --dtype fp16
"""

import argparse
import json
import os
import sys

import torch

import diffusers
from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

sys.path.insert(0, os.path.dirname(__file__))
from timing import Timer  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def load(args, device, dtype):
    if args.model:
        d = args.model
        index = json.load(open(os.path.join(d, "model_index.json")))
        names = ["text_encoder"] + (["text_encoder_2"] if "text_encoder_2" in index else [])
        tes = [(CLIPTextModelWithProjection if n == "text_encoder_2" else CLIPTextModel).from_pretrained(os.path.join(d, n)) for n in names]
        unet = UNet2DConditionModel.from_pretrained(os.path.join(d, "unet"))
        vae = AutoencoderKL.from_pretrained(os.path.join(d, "vae"))
        sched = EulerDiscreteScheduler.from_pretrained(os.path.join(d, "scheduler"))
        name = d
    else:
        d = os.path.join(ROOT, "crates", "kiln-pipeline", "configs", args.preset)
        tes = []
        for n in ["text_encoder", "text_encoder_2"]:
            p = os.path.join(d, n, "config.json")
            if os.path.exists(p):
                cfg = CLIPTextConfig.from_json_file(p)
                cls = CLIPTextModelWithProjection if "CLIPTextModelWithProjection" in (cfg.architectures or []) else CLIPTextModel
                tes.append(cls(cfg))
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(os.path.join(d, "unet")))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(os.path.join(d, "vae")))
        sched = EulerDiscreteScheduler.from_config(EulerDiscreteScheduler.load_config(os.path.join(d, "scheduler")))
        name = f"preset {args.preset} (random weights)"
    tes = [t.to(device).eval() for t in tes]
    unet = unet.to(device, dtype).eval()
    vae = vae.to(device, torch.float32 if args.vae_dtype == "fp32" else dtype).eval()
    if args.channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    return name, tes, unet, vae, sched


def main():
    ap = argparse.ArgumentParser()
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset")
    src.add_argument("--model")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16"])
    ap.add_argument("--vae-dtype", default="fp32", choices=["fp32", "fp16"])
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    ap.add_argument("--channels-last", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    cuda = device.type == "cuda"
    name, tes, unet, vae, sched = load(args, device, dtype)
    timer = Timer(cuda)
    timed = timer.timed

    b, cfg_b = args.batch, 2 * args.batch
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    lh, lw = args.height // f, args.width // f
    seq = min(77, min(t.config.max_position_embeddings for t in tes))
    ids = torch.tensor([[(i * 7919 + j * 104729) % 49000 for j in range(seq)] for i in range(2)], device=device)

    def encode():
        parts, pooled = [], None
        for t in tes:
            out = t(ids, output_hidden_states=True)
            parts.append(out.hidden_states[-2] if len(tes) > 1 else out.last_hidden_state)
            if hasattr(out, "text_embeds"):
                pooled = out.text_embeds
        return torch.cat(parts, dim=-1), pooled

    text_encode = timed(encode, args.iters)
    with torch.no_grad():
        context, pooled = encode()
    context = context.repeat(b, 1, 1).to(dtype)
    added = None
    if unet.config.addition_embed_type == "text_time":
        time_ids = torch.tensor([[args.height, args.width, 0, 0, args.height, args.width]] * cfg_b, device=device, dtype=dtype)
        added = {"text_embeds": pooled.repeat(b, 1).to(dtype), "time_ids": time_ids}
    g = torch.Generator("cpu").manual_seed(0)
    sample = torch.randn((cfg_b, unet.config.in_channels, lh, lw), generator=g).to(device, dtype)
    if args.channels_last:
        sample = sample.to(memory_format=torch.channels_last)
    t999 = torch.tensor(999.0, device=device)
    unet_step = timed(lambda: unet(sample, t999, encoder_hidden_states=context, added_cond_kwargs=added).sample, args.iters)
    latents = torch.randn((b, vae.config.latent_channels, lh, lw), generator=g).to(device, vae.dtype)
    vae_decode = timed(lambda: vae.decode(latents).sample, args.iters)

    def end_to_end():
        sched.set_timesteps(args.steps, device=device)
        c, _ = encode()
        c = c.repeat(b, 1, 1).to(dtype)
        x = torch.randn((b, unet.config.in_channels, lh, lw), generator=torch.Generator("cpu").manual_seed(0)).to(device, dtype)
        x = x * sched.init_noise_sigma
        for t in sched.timesteps:
            inp = sched.scale_model_input(torch.cat([x, x]), t)
            pred = unet(inp, t, encoder_hidden_states=c, added_cond_kwargs=added).sample
            u, tx = pred.chunk(2)
            x = sched.step(u + 7.5 * (tx - u), t, x).prev_sample
        return vae.decode((x / vae.config.scaling_factor).to(vae.dtype)).sample

    e2e = timed(end_to_end, min(args.iters, 2))

    # SDPA alone at every attention shape the UNet step used (captured by hooks on diffusers'
    # Attention modules), for compare.py's per-shape kiln ÷ torch and TFLOP/s of kiln's routes
    shapes = []

    def capture(module, args_, kwargs):
        x = args_[0] if args_ else kwargs["hidden_states"]
        ctx = kwargs.get("encoder_hidden_states")
        if x.ndim == 4:  # the VAE's spatial attention takes [b, c, h, w]
            x = x.flatten(2).transpose(1, 2)
        kv = x if ctx is None else ctx
        d = module.inner_dim // module.heads
        shape = (x.shape[0], module.heads, x.shape[1], kv.shape[1], d)
        if shape not in shapes:
            shapes.append(shape)

    from diffusers.models.attention_processor import Attention
    hooks = [m.register_forward_pre_hook(capture, with_kwargs=True) for m in unet.modules() if isinstance(m, Attention)]
    with torch.no_grad():
        unet(sample, t999, encoder_hidden_states=context, added_cond_kwargs=added)
    for h in hooks:
        h.remove()
    attention = []
    for (bq, h, sq, sk, d) in shapes:
        q = torch.randn((bq, h, sq, d), device=device, dtype=dtype)
        k = torch.randn((bq, h, sk, d), device=device, dtype=dtype)
        v = torch.randn((bq, h, sk, d), device=device, dtype=dtype)
        t = timed(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), args.iters)
        attention.append(dict(q=[bq, h, sq, d], k=[bq, h, sk, d], flop=4 * bq * h * sq * sk * d, **t))
    if cuda:
        source = "torch.cuda.max_memory_allocated"
        device_name = f"{args.device} ({torch.cuda.get_device_name(device)})"
    else:
        source = "process peak RSS (VmHWM)"
        device_name = f"cpu (torch {torch.__version__}, {torch.get_num_threads()} threads)"
    print(json.dumps(dict(
        model=name, device=device_name, dtype="f16" if args.dtype == "fp16" else "f32",
        vae_dtype="f16" if args.vae_dtype == "fp16" else "f32", width=args.width, height=args.height,
        batch=b, steps=args.steps, text_encode=text_encode, unet_step=unet_step, vae_decode=vae_decode,
        end_to_end=e2e, attention=attention, peak_memory_bytes=timer.peak,
        steady_peak_memory_bytes=timer.steady, peak_memory_source=source,
        unet_parameters=sum(p.numel() for p in unet.parameters()), diffusers=diffusers.__version__,
    ), indent=1))


if __name__ == "__main__":
    main()
