#!/usr/bin/env python3
"""Real-scale benchmark: a bundle with the real SD3-medium / DPIR shapes and random weights, measured on CPU.

    build/venv/bin/python tools/bench/full_size.py [--dtype fp32] [--size 512] [--steps 4] [--skip-convert]

1. makes the random models (`python -m dpir_export.full_size`) and converts them with the converter into
   build/full/bundle-DTYPE (skipped when the bundle exists or with --skip-convert);
2. times the Rust runtime (`dpir bench`: load time, a SIZExSIZE restore, time inside ONNX Runtime) and records its
   peak resident memory;
3. times the same restore through the Python reference pipeline (numpy + onnxruntime) on the same bundle;
4. prints the weights' bytes on disk, both runs, and the ratio.

Needs tools/setup.sh, tools/setup-tests.sh (build/venv) and tools/export/setup.sh (build/export-venv). The fp32
conversion writes about 10 GB and peaks near 20 GiB of memory: run it alone on a 24 GiB machine.
"""
import argparse
import os
import re
import subprocess
import tempfile
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "build" / "full"


def run_measured(command, env=None):
    """Runs a command; returns (wall seconds, its output, its own peak resident memory in bytes)."""
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        child = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        log.seek(0)
        out = log.read()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{command[0]} failed:\n{out}")
    return wall, out, usage.ru_maxrss * 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--skip-convert", action="store_true")
    args = ap.parse_args()
    bundle = WORK / f"bundle-{args.dtype}"
    export_py = ROOT / "build" / "export-venv" / "bin" / "python"
    if not (bundle / "dpir.json").exists() and not args.skip_convert:
        if not (WORK / "models" / "dpir").exists():
            subprocess.run([export_py, "-m", "dpir_export.full_size", WORK / "models"], check=True)
        m = WORK / "models"
        subprocess.run([export_py, "-m", "dpir_export", "--sd3", m / "stable-diffusion-3-medium-diffusers",
                        "--dpir-transformer", m / "dpir" / "consolidated.00-of-01.pth", "--vae-encoder", m / "dr-vae",
                        "--clip-b32", m / "clip-vit-base-patch32", "--clip-bigg", m / "clip-global-standin",
                        "--name", "dpir-full-size-random", "--dtype", args.dtype, "--out", bundle], check=True)
    weights = sum(f.stat().st_size for f in bundle.iterdir() if f.suffix in (".onnx", ".data"))

    wall, out, rss = run_measured([ROOT / "target" / "release" / "dpir", "bench", "--model", bundle,
                                   "--size", str(args.size), "--steps", str(args.steps), "--runs", "1"])
    load = float(re.search(r"loaded in ([0-9.]+) s", out).group(1))
    row = re.search(rf"^\s*{args.size}\s+single\s+\d+\s+([0-9.]+)\s+([0-9.]+)", out, re.M)
    total, inside = float(row.group(1)), float(row.group(2))

    image = WORK / f"input-{args.size}.npy"
    import numpy as np
    y, x = np.mgrid[0:args.size, 0:args.size] / args.size
    np.save(image, np.stack([x, y, 0.5 + 0.4 * np.sin(9 * x * y)], -1).astype(np.float32))
    env = dict(os.environ, DPIR_REF_THREADS=str(os.cpu_count()))
    ref_wall, ref_out, ref_rss = run_measured([sys.executable, ROOT / "tools" / "reference" / "dpir_reference.py",
                                              "--bundle", bundle, "--input", image, "--output", WORK / "ref.npy",
                                              "--steps", str(args.steps)], env=env)
    ref_restore = float(re.search(r"in ([0-9.]+) s:", ref_out).group(1))

    gib = 1024 ** 3
    print(f"bundle {bundle.name}: {weights / gib:.2f} GiB of graphs and weights on disk")
    print(f"Rust: load {load:.1f} s; {args.size}x{args.size}, {args.steps} steps: {total:.1f} s "
          f"({inside:.1f} s in ONNX Runtime, overhead {100 * (total / inside - 1):.1f}%); peak RSS "
          + f"{rss / gib:.2f} GiB = {rss / weights:.2f} x weights")
    print(f"Python reference: restore {ref_restore:.1f} s (process {ref_wall:.1f} s); peak RSS {ref_rss / gib:.2f} GiB")
    print(f"ratio Python / Rust restore: {ref_restore / total:.2f}")


if __name__ == "__main__":
    main()
