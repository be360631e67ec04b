#!/usr/bin/env python3
"""The short GPU check (tools/device/kit.sh quick): the runtime's CUDA path against its CPU path on small bundles,
in about a minute and without the full-size conversion.

    python3 tools/device/quick.py [--ep cuda] [--onnxruntime-gpu DIR] [--json FILE]

1. oracle (a pass-through model): a PNG restored on EP and on the CPU, the same within a float16 step;
2. tiny (fp32) and, when the converter's packages are importable, tiny converted to fp16 at opset 23: a 256x256
   restore, 4 steps, from the same noise on EP and on the CPU, plain and with guidance in joint tiles (several
   tiles, a doubled batch: the inputs kept on the device across steps); max abs on [0, 1] pixels;
3. `dpir bench` of each at 1024x1024, 28 steps (tools/bench/gpu.py's): first and warm restore, time outside ONNX
   Runtime, peak GPU memory.

--ep cpu --onnxruntime-gpu build/onnxruntime/lib runs the same on the CPU against itself, to check the script
without a GPU (with the converter's packages on the path for the fp16 part).
"""
import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "build" / "device" / "quick"
BUNDLES = ROOT / "tests" / "fixtures" / "bundles"
sys.path.insert(0, str(ROOT / "tools" / "bench"))

from gpu import bench, dpir, run  # noqa: E402 (tools/bench is not a package)


def compare(args, env, bundle, picture, name, *options):
    """One restore on EP and one on the CPU from the same noise; the largest difference."""
    noise, outputs = WORK / f"{name}-noise.npy", []
    for ep, start in ((args.ep, "--save-noise"), ("cpu", "--noise")):
        out = WORK / f"{name}-{ep.replace(':', '')}.npy"
        run(dpir(args, bundle, ep, "restore", picture, out) + [start, noise, "--quiet", *options], env)
        outputs.append(np.load(out).astype(np.float64))
    return float(np.abs(outputs[0] - outputs[1]).max())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ep", default="cuda")
    ap.add_argument("--onnxruntime-gpu", type=Path, default=ROOT / "build" / "onnxruntime-gpu" / "lib")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    # The runtime looks for the CUDA libraries in the active environment's packages: this Python's.
    env = dict(os.environ, VIRTUAL_ENV=sys.prefix)
    report = {"ep": args.ep}

    picture = ROOT / "examples" / "images" / "landscape.png"
    oracle = compare(args, env, BUNDLES / "oracle", picture, "oracle", "--steps", "2")
    report["oracle"] = {"max_abs": oracle}
    print(f"oracle, {args.ep} vs cpu: max abs {oracle:.2e}")

    bundles = {"tiny": BUNDLES / "tiny"}
    fp16 = WORK / "tiny-fp16-opset23"
    try:
        from full_size import convert, make_models

        if not (fp16 / "dpir.json").exists():
            make_models(sys.executable, WORK / "models", "tiny")
            convert(sys.executable, WORK / "models", fp16, "fp16", 23, "--no-verify", "--force")
        bundles["tiny-fp16-opset23"] = fp16
    except ImportError as missing:
        print(f"no fp16 bundle: the converter's packages are missing ({missing})")

    small = WORK / "input-256.npy"
    y, x = np.mgrid[0:256, 0:256] / 256
    np.save(small, np.stack([x, y, 0.5 + 0.4 * np.sin(9 * x * y)], -1).astype(np.float32))
    joint = ["--guidance", "2.5", "--tile-mode", "joint", "--tile-size", "16", "--tile-overlap", "4"]
    for name, bundle in bundles.items():
        plain = compare(args, env, bundle, small, name, "--steps", "4")
        guided = compare(args, env, bundle, small, f"{name}-joint", "--steps", "4", *joint)
        figures = bench(args, bundle, env, 1024, 2, 28)
        figures["overhead_percent"] = 100 * (figures["restore_s"] / figures["in_session_s"] - 1)
        report[name] = {"max_abs": plain, "joint_guided_max_abs": guided, "bench_1024": figures}
        print(f"{name}, {args.ep} vs cpu, 256x256, 4 steps: max abs {plain:.2e}; joint tiles with guidance "
              f"{guided:.2e}; 1024x1024, 28 steps on {args.ep}: {figures['restore_s']:.3f} s (first "
              f"{figures['first_restore_s']:.3f} s), {figures['overhead_percent']:.1f}% outside ONNX Runtime")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
