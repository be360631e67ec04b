#!/usr/bin/env python3
"""Real-scale benchmark: a bundle with the real SD3-medium / DPIR shapes and random weights, measured on CPU.

    build/venv/bin/python tools/bench/full_size.py [--dtype fp32] [--opset 18] [--size 512] [--steps 4]
        [--skip-convert]

1. makes the random models (`python -m dpir_export.full_size`) and converts them with the converter into
   build/full/bundle-DTYPE[-opset23] (skipped when the bundle exists or with --skip-convert);
2. restores a SIZExSIZE picture with the Rust CLI in a fresh process (load time, restore time, time inside ONNX
   Runtime, peak resident memory) and compares the result with the fp32 bundle's, when that was measured before;
3. restores the same picture from the same starting noise through the Python reference pipeline (numpy +
   onnxruntime) on the same bundle, and compares the two (bf16 bundles: skipped, numpy has no bfloat16);
4. prints the weights' bytes on disk, both runs, the differences and the ratio of the times.

Needs tools/setup.sh, tools/setup-tests.sh (build/venv) and tools/export/setup.sh (build/export-venv). The fp32
conversion writes about 10 GB and peaks near 20 GiB of memory: run it alone on a 24 GiB machine.
"""
import argparse
import json
import os
import re
import subprocess
import tempfile
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "build" / "full"


# The model maker's global CLIP folder; the tiny models (dpir_export.tiny) name theirs like the real release's.
GLOBAL_CLIP_FOLDERS = ("clip-global-standin", "CLIP-ViT-bigG-14-laion2B-39B-b160k")


def sources(models):
    """The converter's source paths inside a folder written by dpir_export.full_size (or .tiny), by job key."""
    return {"sd3": models / "stable-diffusion-3-medium-diffusers",
            "dpir_transformer": models / "dpir" / "consolidated.00-of-01.pth", "vae_encoder": models / "dr-vae",
            "clip_b32": models / "clip-vit-base-patch32",
            "clip_bigg": next(models / f for f in GLOBAL_CLIP_FOLDERS if (models / f).exists())}


def make_models(python, models, maker="full_size"):
    """Writes random models with `python -m dpir_export.MAKER` into `models` unless it holds some already."""
    if not (models / "convert.json").exists():
        subprocess.run([python, "-m", f"dpir_export.{maker}", models], env=_export_env(), check=True)


def convert(python, models, bundle, dtype, opset, *options):
    """Converts the models in `models` (made by make_models, which wrote their arguments to convert.json) into
    `bundle` with `python` (which needs the converter's packages); `options` go to the converter as they are."""
    flags = json.loads((models / "convert.json").read_text())
    subprocess.run([python, "-m", "dpir_export", *flags, "--dtype", dtype, "--opset", str(opset), *options,
                    "--out", bundle], env=_export_env(), check=True)


def _export_env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT / "tools" / "export"), *filter(None, [os.environ.get("PYTHONPATH")])]))


def run_measured(command, env=None):
    """Runs a command; returns its output and its own peak resident memory in bytes."""
    with tempfile.TemporaryFile("w+") as log:
        child = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        log.seek(0)
        out = log.read()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{command[0]} failed:\n{out}")
    return out, usage.ru_maxrss * 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--opset", type=int, default=18, choices=[18, 23], help="the converter's --opset")
    ap.add_argument("--skip-convert", action="store_true")
    args = ap.parse_args()
    name = args.dtype + ("" if args.opset == 18 else f"-opset{args.opset}")
    bundle = WORK / f"bundle-{name}"
    if not (bundle / "dpir.json").exists() and not args.skip_convert:
        python = ROOT / "build" / "export-venv" / "bin" / "python"
        make_models(python, WORK / "models")
        convert(python, WORK / "models", bundle, args.dtype, args.opset)
    weights = sum(f.stat().st_size for f in bundle.iterdir() if f.suffix in (".onnx", ".data"))
    gib = 1024 ** 3
    print(f"bundle {bundle.name}: {weights / gib:.2f} GiB of graphs and weights on disk")

    image = WORK / f"input-{args.size}.npy"
    y, x = np.mgrid[0:args.size, 0:args.size] / args.size
    np.save(image, np.stack([x, y, 0.5 + 0.4 * np.sin(9 * x * y)], -1).astype(np.float32))
    steps = ["--steps", str(args.steps)]

    # One restore in a fresh process, as a user runs the CLI: load, first restore, exit.
    rust_out, noise = WORK / f"rust-{name}-{args.size}.npy", WORK / f"noise-{args.size}.npy"
    out, rss = run_measured([ROOT / "target" / "release" / "dpir", "restore", image, rust_out, "--model", bundle,
                                "--save-noise", noise, *steps])
    load = float(re.search(r"loaded .* in ([0-9.]+) s", out).group(1))
    total, inside = (float(v) for v in re.search(r"in ([0-9.]+) s \(([0-9.]+) s in \d+ model calls", out).groups())
    print(f"Rust: load {load:.1f} s; {args.size}x{args.size}, {args.steps} steps: {total:.1f} s "
          f"({inside:.1f} s in ONNX Runtime, overhead {100 * (total / inside - 1):.1f}%); peak RSS "
          + f"{rss / gib:.2f} GiB = {rss / weights:.2f} x weights")
    rust = np.load(rust_out)
    fp32 = WORK / f"rust-fp32-{args.size}.npy"
    if name != "fp32" and fp32.exists():
        print(f"vs the fp32 bundle's restore: {differences(rust, np.load(fp32))}")

    if args.dtype == "bf16":
        print("Python reference: skipped (numpy cannot feed bfloat16 graphs)")
        return
    env = dict(os.environ, DPIR_REF_THREADS=str(os.cpu_count()))
    ref_out = WORK / f"reference-{name}-{args.size}.npy"
    ref_log, ref_rss = run_measured([sys.executable, ROOT / "tools" / "reference" / "dpir_reference.py",
                                        "--bundle", bundle, "--input", image, "--output", ref_out, "--noise", noise,
                                        *steps], env=env)
    ref_restore = float(re.search(r"in ([0-9.]+) s:", ref_log).group(1))
    print(f"Python reference: restore {ref_restore:.1f} s; peak RSS {ref_rss / gib:.2f} GiB; "
          f"vs Rust: {differences(np.load(ref_out), rust)}")
    print(f"ratio Python / Rust restore: {ref_restore / total:.2f}")


def differences(a, b):
    """Max and mean absolute difference of two images in [0, 1], and the PSNR of one against the other."""
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    psnr = 10 * np.log10(1.0 / max(float((d ** 2).mean()), 1e-20))
    return f"max abs {d.max():.2e}, mean abs {d.mean():.2e}, PSNR {psnr:.1f} dB"


if __name__ == "__main__":
    main()
