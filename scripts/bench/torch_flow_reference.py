#!/usr/bin/env python3
"""The PyTorch/diffusers side of `kiln bench` for the flow-matching families (SD 3/3.5, FLUX.1): the
same components built from the same configs (crates/kiln-pipeline/configs/<preset>, random weights)
or loaded from the same model folder, the same inputs shape for shape (77 CLIP tokens and 256 (SD 3)
or 512 (FLUX) T5 tokens for two prompts; SD 3's transformer on the CFG batch, FLUX's on the batch
with the guidance embedded), the same protocol as scripts/bench/torch_reference.py, and the same
JSON fields, so scripts/bench/compare.py can divide kiln's times by these.

    python scripts/bench/torch_flow_reference.py --model assets/fixtures/models/sd3 --width 32 --height 24 --steps 2
    python scripts/bench/torch_flow_reference.py --preset sd35m --width 1024 --height 1024 --device cuda --dtype fp16
"""

import argparse
import json
import os
import sys

import numpy as np
import torch

import diffusers
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel, SD3Transformer2DModel
from diffusers.pipelines.flux.pipeline_flux import FluxPipeline, calculate_shift
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

sys.path.insert(0, os.path.dirname(__file__))
from timing import Timer  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
PRESETS = {"sd35m": "sd35-medium", "sd35l": "sd35-large", "flux-schnell": "flux-schnell", "flux-dev": "flux-dev"}


def load(args, device, dtype):
    d = args.model or os.path.join(ROOT, "crates", "kiln-pipeline", "configs", PRESETS[args.preset])
    index = json.load(open(os.path.join(d, "model_index.json")))
    sd3 = index["_class_name"].startswith("StableDiffusion3")
    clip_names = ["text_encoder", "text_encoder_2"] if sd3 else ["text_encoder"]
    t5_name = "text_encoder_3" if sd3 else "text_encoder_2"
    has_t5 = (index.get(t5_name) or [None])[0] is not None
    if args.model:
        clips = [(CLIPTextModelWithProjection if sd3 else CLIPTextModel).from_pretrained(os.path.join(d, n)) for n in clip_names]
        t5 = T5EncoderModel.from_pretrained(os.path.join(d, t5_name)) if has_t5 else None
        transformer = (SD3Transformer2DModel if sd3 else FluxTransformer2DModel).from_pretrained(os.path.join(d, "transformer"))
        vae = AutoencoderKL.from_pretrained(os.path.join(d, "vae"))
        name = d
    else:
        # random weights initialised on the device in their dtype (12 B parameters on the CPU in
        # float32 would take minutes and 48 GB)
        with torch.device(device):
            clips = [(CLIPTextModelWithProjection if sd3 else CLIPTextModel)(CLIPTextConfig.from_json_file(os.path.join(d, n, "config.json")))
                     for n in clip_names]
            torch.set_default_dtype(dtype)
            t5 = T5EncoderModel(T5Config.from_json_file(os.path.join(d, t5_name, "config.json")))
            cls = SD3Transformer2DModel if sd3 else FluxTransformer2DModel
            transformer = cls.from_config(cls.load_config(os.path.join(d, "transformer")))
            torch.set_default_dtype(torch.float32)
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(os.path.join(d, "vae")))
        name = f"preset {args.preset} (random weights)"
    sched = FlowMatchEulerDiscreteScheduler.from_config(FlowMatchEulerDiscreteScheduler.load_config(os.path.join(d, "scheduler")))
    clips = [c.to(device, torch.float32).eval() for c in clips]  # (a config with "torch_dtype" would build them in f16)
    t5 = t5.to(device, dtype).eval() if t5 is not None else None  # the T5 in the transformer's dtype, as kiln bench builds it
    transformer = transformer.to(device, dtype).eval()
    vae = vae.to(device, torch.float32 if args.vae_dtype == "fp32" else dtype).eval()
    return name, sd3, clips, t5, transformer, vae, sched


def main():
    ap = argparse.ArgumentParser()
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", choices=sorted(PRESETS))
    src.add_argument("--model")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16"])
    ap.add_argument("--vae-dtype", default="fp32", choices=["fp32", "fp16"])
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--height", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    cuda = device.type == "cuda"
    name, sd3, clips, t5, transformer, vae, sched = load(args, device, dtype)
    timer = Timer(cuda)
    timed = timer.timed

    b = args.batch
    rows = 2 * b if sd3 else b
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    lh, lw = args.height // f, args.width // f
    t5_len = 256 if sd3 else 512
    joint = transformer.config.joint_attention_dim
    clip_ids = torch.tensor([[(i * 7919 + j * 104729) % 49000 for j in range(77)] for i in range(2)], device=device)
    t5_vocab = min(t5.config.vocab_size, 32000) if t5 is not None else 1
    t5_ids = torch.tensor([[(i * 7919 + j * 104729) % t5_vocab for j in range(t5_len)] for i in range(2)], device=device)

    def encode():
        pooled, hidden = [], []
        for c in clips:
            out = c(clip_ids, output_hidden_states=True)
            pooled.append(out[0] if sd3 else out.pooler_output)
            hidden.append(out.hidden_states[-2])
        t5_out = t5(t5_ids)[0].float() if t5 is not None else torch.zeros((2, t5_len, joint), device=device)
        if not sd3:
            return t5_out, pooled[0]
        clip = torch.cat(hidden, dim=-1)
        clip = torch.nn.functional.pad(clip, (0, t5_out.shape[-1] - clip.shape[-1]))
        return torch.cat([clip, t5_out], dim=-2), torch.cat(pooled, dim=-1)

    text_encode = timed(encode, args.iters)
    with torch.no_grad():
        context, pooled = encode()

    def pick(t):  # the two prompts' rows for the CFG batch, as kiln bench does
        return t[2 - rows:] if rows <= 2 else t[:1].repeat(rows, *([1] * (t.ndim - 1)))

    context, pooled = pick(context).to(dtype), pick(pooled).to(dtype)
    g = torch.Generator("cpu").manual_seed(0)
    seq = (lh // 2) * (lw // 2)
    if sd3:
        sample = torch.randn((rows, transformer.config.in_channels, lh, lw), generator=g).to(device, dtype)
    else:
        sample = torch.randn((rows, seq, transformer.config.in_channels), generator=g).to(device, dtype)
    img_ids = FluxPipeline._prepare_latent_image_ids(rows, lh // 2, lw // 2, device, dtype)
    txt_ids = torch.zeros(context.shape[1], 3, device=device, dtype=dtype)
    guidance = torch.full([rows], 3.5, device=device) if not sd3 and transformer.config.guidance_embeds else None

    def step(x, t, c, p):
        n = x.shape[0]
        if sd3:
            return transformer(x, c, p, t.expand(n)).sample
        return transformer(x, c, p, (t / 1000).expand(n), img_ids, txt_ids, None if guidance is None else guidance[:n]).sample

    t1000 = torch.tensor(1000.0, device=device)
    unet_step = timed(lambda: step(sample, t1000, context, pooled), args.iters)
    latents = torch.randn((b, vae.config.latent_channels, lh, lw), generator=g).to(device, vae.dtype)
    vae_decode = timed(lambda: vae.decode(latents).sample, args.iters)

    def end_to_end():
        if sd3:
            mu = calculate_shift(seq, sched.config.get("base_image_seq_len", 256), sched.config.get("max_image_seq_len", 4096),
                                 sched.config.get("base_shift", 0.5), sched.config.get("max_shift", 1.16)) \
                if sched.config.get("use_dynamic_shifting") else None
            sched.set_timesteps(args.steps, device=device, **({"mu": mu} if mu is not None else {}))
        else:
            mu = calculate_shift(seq, sched.config.get("base_image_seq_len", 256), sched.config.get("max_image_seq_len", 4096),
                                 sched.config.get("base_shift", 0.5), sched.config.get("max_shift", 1.15))
            sched.set_timesteps(sigmas=np.linspace(1.0, 1 / args.steps, args.steps), mu=mu, device=device)
        c, p = encode()
        c, p = pick(c).to(dtype), pick(p).to(dtype)
        gen = torch.Generator("cpu").manual_seed(0)
        shape = (b, transformer.config.in_channels, lh, lw) if sd3 else (b, seq, transformer.config.in_channels)
        x = torch.randn(shape, generator=gen).to(device, dtype)
        for t in sched.timesteps:
            pred = step(torch.cat([x, x]) if sd3 else x, t, c, p)
            if sd3:
                u, tx = pred.chunk(2)
                pred = u + 7.0 * (tx - u)
            x = sched.step(pred, t, x).prev_sample
        z = x if sd3 else FluxPipeline._unpack_latents(x, args.height, args.width, f)
        z = z / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
        return vae.decode(z.to(vae.dtype)).sample

    e2e = timed(end_to_end, min(args.iters, 2))
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
        end_to_end=e2e, attention=[], peak_memory_bytes=timer.peak, steady_peak_memory_bytes=timer.steady,
        peak_memory_source=source, unet_parameters=sum(p.numel() for p in transformer.parameters()),
        denoiser="MMDiT (SD 3)" if sd3 else "FLUX transformer", diffusers=diffusers.__version__,
    ), indent=1))


if __name__ == "__main__":
    main()
