#!/usr/bin/env python3
"""GPU benchmark: the Rust runtime on ONNX Runtime's CUDA provider with an fp16 bundle, against a PyTorch reference
pipeline in the official precision (transformer and CLIP in bf16, VAE in fp32) on the same full-size random weights.

    build/export-venv/bin/python tools/bench/gpu.py [--size 1024] [--steps 28] [--runs 3] [--opset 18 23]
        [--bundle DIR] [--models DIR] [--onnxruntime-gpu DIR] [--json FILE]

Before it: tools/setup.sh (target/release/dpir), tools/export/setup.sh (a CUDA 13 PyTorch with the converter's
packages; any Python with those will do) and `python3 tools/fetch_onnxruntime.py --gpu` (the onnxruntime-gpu
library and its CUDA provider in build/onnxruntime-gpu/lib; --wheel FILE where there is no network).

1. CUDA: the runtime takes the CUDA 13 and cuDNN 9 libraries from the NVIDIA packages of this Python's environment
   (PyTorch's own; cuRAND: `pip install nvidia-curand`). One restore with the oracle bundle checks the provider
   before anything is converted; a missing library is named with the package that has it.
2. The bundles: --bundle, else one per --opset (build/full/bundle-fp16 for 18, bundle-fp16-opset23 for 23, whose
   attention is the standard Attention op that the CUDA provider fuses), converted with the checks off from
   --models (default build/full/models, made by `python -m dpir_export.full_size` when missing).
3. Rust, each bundle: `dpir bench --ep cuda`: load time, the best of --runs warm SIZExSIZE restores, the time per
   transformer run.
4. PyTorch: the converter's reference pipeline (dpir_export.reference, written from tools/reference/PROCEDURE.md) on
   the PyTorch modules, the same number of warm runs, transformer runs timed between CUDA synchronisations. Its
   pre- and post-processing (resampling, wavelet colour fix) is numpy on the CPU, as in the converter's checks.
5. One restore of the same picture from the same starting noise through each, compared with PyTorch's.

--device cpu --ep cpu runs the same steps without a GPU (on tiny models, with --onnxruntime-gpu naming any ONNX
Runtime library folder), to check the script itself; tools/test.sh does.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from full_size import ROOT, WORK, convert, sources

sys.path.insert(0, str(ROOT / "tools" / "export"))


def check_provider(args, env):
    """One restore of the oracle bundle on the provider, to fail in seconds rather than after the conversion."""
    if not (args.onnxruntime_gpu / "libonnxruntime_providers_cuda.so").exists():
        sys.exit(f"error: no CUDA provider in {args.onnxruntime_gpu}: run `python3 tools/fetch_onnxruntime.py --gpu`")
    picture = ROOT / "examples" / "images" / "landscape.png"
    check = subprocess.run([ROOT / "target" / "release" / "dpir", "restore", picture, WORK / "provider-check.png",
                            "--model", ROOT / "tests" / "fixtures" / "bundles" / "oracle", "--ep", args.ep, "--ort-lib",
                            args.onnxruntime_gpu / "libonnxruntime.so.1.31.1", "--steps", "1", "--quiet"],
                           env=env, capture_output=True, text=True)
    if check.returncode != 0:
        sys.exit(f"the runtime cannot use {args.ep}:\n{check.stderr}")


def rust(args, bundle, env, image, noise):
    """dpir bench (timings), then one restore of `image` saving its starting noise; returns (figures, output)."""
    dpir = [ROOT / "target" / "release" / "dpir"]
    model = ["--model", bundle, "--ep", args.ep, "--ort-lib", args.onnxruntime_gpu / "libonnxruntime.so.1.31.1"]
    steps = ["--steps", str(args.steps)]
    bench = subprocess.run(dpir + ["bench", *model, *steps, "--size", str(args.size), "--runs", str(args.runs)],
                           env=env, capture_output=True, text=True)
    if bench.returncode != 0:
        sys.exit(f"dpir bench failed:\n{bench.stdout}{bench.stderr}")
    print(bench.stdout, end="")
    load = float(re.search(r"loaded in ([0-9.]+) s", bench.stdout).group(1))
    row = re.search(rf"^\s*{args.size}\s+single\s+\d+\s+([0-9.]+)\s+([0-9.]+)\s.*\s([0-9.]+)$", bench.stdout, re.M)
    total, inside, per_step = (float(v) for v in row.groups())
    output = WORK / f"gpu-rust-{bundle.name}-{args.size}.npy"
    subprocess.run(dpir + ["restore", image, output, *model, *steps, "--prompt", "zeros", "--save-noise", noise,
                           "--quiet"], env=env, check=True)
    figures = {"load_s": load, "restore_s": total, "in_session_s": inside, "transformer_run_ms": per_step,
               "images_per_s": 1.0 / total}
    return figures, np.load(output)


class TimedModels:
    """The reference pipeline's graph calls on PyTorch modules on `device`, transformer runs timed."""

    def __init__(self, modules, device):
        self.modules, self.device = modules, device
        self.transformer_seconds, self.transformer_runs = 0.0, 0

    def synchronize(self):
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    def __call__(self, name, *inputs):
        import torch

        tensors = [torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(self.device) for x in inputs]
        self.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.modules[name](*tensors)
        self.synchronize()
        if name == "transformer":
            self.transformer_seconds += time.perf_counter() - start
            self.transformer_runs += 1
        if isinstance(out, tuple):
            return tuple(o.float().cpu().numpy() for o in out)
        return out.float().cpu().numpy()


def pytorch(args, models_dir, manifest, image, noise):
    """The reference pipeline in bf16 (transformer, CLIP) and fp32 (VAE); returns (figures, output)."""
    import torch
    from dpir_export import graphs, reference

    device = torch.device(args.device)
    job = {"args": sources(models_dir)}
    modules = {}
    for name in ("vae_encoder", "vae_decoder", "clip_local", "clip_global", "transformer"):
        dtype = torch.float32 if name.startswith("vae") else torch.bfloat16
        modules[name] = graphs.load_module(name, job, log=lambda *_: None).to(device, dtype).eval()
    models = TimedModels(modules, device)
    text = np.zeros((manifest["text"]["tokens"], manifest["text"]["width"]), np.float32)

    def restore():
        return reference.restore(models, manifest, image, noise, text, steps=args.steps)

    restore()  # warm-up: kernels chosen, memory pools grown
    best = None
    for _ in range(max(args.runs, 1)):
        models.transformer_seconds, models.transformer_runs = 0.0, 0
        start = time.perf_counter()
        output = restore()
        seconds = time.perf_counter() - start
        if best is None or seconds < best[0]:
            best = (seconds, models.transformer_seconds, models.transformer_runs)
    seconds, in_transformer, runs = best
    figures = {"restore_s": seconds, "in_transformer_s": in_transformer,
               "transformer_run_ms": 1e3 * in_transformer / max(runs, 1), "images_per_s": 1.0 / seconds}
    return figures, output


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--runs", type=int, default=3, help="timed runs after one warm-up; the best counts")
    ap.add_argument("--opset", type=int, nargs="+", choices=[18, 23], default=[18, 23],
                    help="convert and time a bundle of each of these opsets")
    ap.add_argument("--bundle", type=Path, help="time this fp16 bundle of --models instead")
    ap.add_argument("--models", type=Path, default=WORK / "models", help="the PyTorch models (full_size layout)")
    ap.add_argument("--onnxruntime-gpu", type=Path, default=ROOT / "build" / "onnxruntime-gpu" / "lib")
    ap.add_argument("--device", default="cuda", help="PyTorch device")
    ap.add_argument("--ep", default="cuda", help="the runtime's execution provider")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("error: PyTorch sees no CUDA device (use --device cpu --ep cpu to check the script without one)")
    WORK.mkdir(parents=True, exist_ok=True)
    # The runtime looks for the CUDA libraries in the active environment's packages: this Python's.
    env = dict(os.environ, VIRTUAL_ENV=sys.prefix)
    if args.ep != "cpu":
        check_provider(args, env)
    bundles = [args.bundle] if args.bundle else [WORK / ("bundle-fp16" + ("" if o == 18 else f"-opset{o}"))
                                                  for o in args.opset]
    for bundle, opset in zip(bundles, args.opset):
        if not (bundle / "dpir.json").exists():
            convert(sys.executable, args.models, bundle, "fp16", opset, "--no-verify")
    manifest = json.loads((bundles[0] / "dpir.json").read_text())
    card = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"

    from dpir_export.reference import test_image

    picture, noise = WORK / f"gpu-input-{args.size}.npy", WORK / f"gpu-noise-{args.size}.npy"
    np.save(picture, test_image(args.size, args.size))
    runs = {bundle.name: rust(args, bundle, env, picture, noise) for bundle in bundles}
    torch_figures, torch_output = pytorch(args, args.models, manifest, np.load(picture), np.load(noise))
    report = {"device": card, "size": args.size, "steps": args.steps, "pytorch_bf16": torch_figures}
    print(f"{card}, {args.size}x{args.size}, {args.steps} steps, best of {args.runs} warm runs")
    for name, (figures, output) in runs.items():
        diff = np.abs(output.astype(np.float64) - torch_output)
        figures["vs_pytorch"] = {"max_abs": float(diff.max()), "mean_abs": float(diff.mean())}
        report[f"rust_{name}"] = figures
        print(f"  Rust, {name} on {args.ep}: {figures['images_per_s']:.3f} images/s ({figures['restore_s']:.2f} s, "
              f"{figures['transformer_run_ms']:.1f} ms per transformer run; load {figures['load_s']:.1f} s); "
              f"vs PyTorch, same noise: max abs {diff.max():.2e}, mean abs {diff.mean():.2e}")
    print(f"  PyTorch reference, bf16: {torch_figures['images_per_s']:.3f} images/s "
          f"({torch_figures['restore_s']:.2f} s, {torch_figures['transformer_run_ms']:.1f} ms per transformer run)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
