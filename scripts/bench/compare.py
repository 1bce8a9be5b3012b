#!/usr/bin/env python3
"""Prints kiln ÷ PyTorch time ratios from two `--json` reports of the same configuration
(`kiln bench --json` and scripts/bench/torch_reference.py, or torch_flow_reference.py for SD 3 and
FLUX), measured in the same run. `unet_step` is the denoiser's step (a UNet's, SD 3's MMDiT's or
FLUX's transformer's).

    python scripts/bench/compare.py kiln.json torch.json
"""

import json
import re
import sys


def attention_shape(shape):
    """(q dims, k dims) from a kiln attention route's shape, "q [2, 8, 4096, 40] k [...] v [...]"."""
    m = re.match(r"q \[([\d, ]+)\] k \[([\d, ]+)\]", shape)
    return (tuple(int(x) for x in m[1].split(",")), tuple(int(x) for x in m[2].split(","))) if m else None


def main():
    kiln, ref = (json.load(open(p)) for p in sys.argv[1:3])
    for k in ("width", "height", "batch", "steps", "dtype"):
        if kiln[k] != ref[k]:
            sys.exit(f"the reports differ in {k}: kiln {kiln[k]!r}, torch {ref[k]!r}")
    denoiser = kiln.get("denoiser", "UNet")
    rows = kiln["batch"] if denoiser.startswith("FLUX") else 2 * kiln["batch"]
    print(f"{kiln['model']}  {kiln['width']}x{kiln['height']}  batch {kiln['batch']} ({denoiser} {rows})  {kiln['dtype']}")
    print(f"kiln:  {kiln['device']}{' on ' + kiln['adapter'] if kiln.get('adapter') else ''}\ntorch: {ref['device']}")
    print(f"{'component':<14} {'kiln ms':>10} {'torch ms':>10} {'kiln/torch':>10}   first use kiln / torch (ms)")
    for c in ("text_encode", "unet_step", "vae_decode", "end_to_end"):
        a, b = kiln[c], ref[c]
        print(f"{c:<14} {a['mean_s'] * 1e3:10.2f} {b['mean_s'] * 1e3:10.2f} {a['mean_s'] / b['mean_s']:10.2f}   "
              f"{a['first_use_s'] * 1e3:.1f} / {b['first_use_s'] * 1e3:.1f}")
    if kiln.get("routes"):
        policies = ", ".join(f"{op} {p}" for op, p in kiln["gpu_policies"].items())
        print(f"kiln GPU routes: {policies}; timed at first use:")
        for r in kiln.get("routes", []):
            # relative error per route that disagreed with burn's op; null (JSON has no inf) = not finite
            bad = {name: float("inf") if err is None else err for name, err in (r.get("mismatched") or {}).items()}
            times = ", ".join(f"{name} {ms:.3f} ms" + (f" (disagrees with burn: {bad[name]:.1e})" if name in bad else "")
                              for name, ms in r["times_ms"].items())
            times += "".join(f", {name} failed" for name in bad if name not in r["times_ms"])
            print(f"  {r['op']} {r['dtype']} {r['shape']}: {times} -> {r['route']}{' (stored)' if r.get('stored') else ''}")
            qk = attention_shape(r["shape"]) if r["op"] == "attention" else None
            if qk:
                (b, h, sq, d), (_, _, sk, _) = qk
                flop = 4 * b * h * sq * sk * d
                kept = r["times_ms"][r["route"]]
                torch_ms = next((a["mean_s"] * 1e3 for a in ref.get("attention", [])
                                 if tuple(a["q"]) == qk[0] and tuple(a["k"]) == qk[1]), None)
                vs = f"; torch SDPA {torch_ms:.3f} ms ({flop / torch_ms / 1e9:.1f} TFLOP/s), kiln/torch {kept / torch_ms:.2f}" if torch_ms else ""
                print(f"    kept route {kept:.3f} ms = {flop / kept / 1e9:.1f} TFLOP/s{vs}")
    if kiln.get("unet_profile"):
        p = kiln["unet_profile"]
        print(f"kiln UNet step by op ({p['step_ms']:.2f} ms with a device sync around each op):")
        for o in p["ops"]:
            print(f"  {o['op']:<12} {o['calls']:>5} calls {o['ms']:10.2f} ms {100 * o['share']:6.1f} %")
        print(f"  {'other':<12} {'':>5}       {p['other_ms']:10.2f} ms {100 * p['other_ms'] / p['step_ms']:6.1f} %")
    if kiln.get("peak_memory_bytes") and ref.get("peak_memory_bytes"):
        gib = 1 << 30
        print(f"peak memory    {kiln['peak_memory_bytes'] / gib:9.2f}G {ref['peak_memory_bytes'] / gib:9.2f}G "
              f"{kiln['peak_memory_bytes'] / ref['peak_memory_bytes']:10.2f}   ({kiln['peak_memory_source']} / {ref['peak_memory_source']})")
    if kiln.get("steady_peak_memory_bytes") and ref.get("steady_peak_memory_bytes"):
        a, b = kiln["steady_peak_memory_bytes"], ref["steady_peak_memory_bytes"]
        print(f"  timed calls  {a / gib:9.2f}G {b / gib:9.2f}G {a / b:10.2f}   (after the first use's memory is given back)")


if __name__ == "__main__":
    main()
