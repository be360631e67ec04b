#!/usr/bin/env python3
"""GPU benchmark: the Rust runtime on ONNX Runtime's CUDA provider with fp16 bundles, against a PyTorch reference
pipeline in the official precision (transformer and CLIP in bf16, VAE in fp32) on the same full-size random weights.

    python tools/bench/gpu.py [--size 1024] [--steps 28] [--runs 3] [--opset 18 23] [--tiled-size 2048]
        [--check-size 256] [--models DIR] [--maker full_size|tiny] [--onnxruntime-gpu DIR] [--json FILE]
        [--prepare-only]

Needs target/release/dpir, a PyTorch (CUDA 13 for a GPU) with the converter's packages, and the onnxruntime-gpu
library folder (`python3 tools/fetch_onnxruntime.py --gpu`). On the project's borrowed GPU machine,
tools/device/ brings all of that over and runs this script (tools/device/README.md).

1. CUDA: the runtime takes the CUDA 13 and cuDNN 9 libraries from the NVIDIA packages of this Python's environment
   (PyTorch's own). One restore with the oracle bundle checks the provider before anything is converted.
2. The bundles: --bundle, else one per --opset (build/full/bundle-fp16 for 18, bundle-fp16-opset23 for 23, whose
   attention is the standard Attention op that the CUDA provider fuses), converted in parallel with the checks off
   from --models (random models written by `python -m dpir_export.MAKER` when missing). --prepare-only stops here.
3. Rust, each bundle: `dpir bench --ep EP`: load time, first restore, the best of --runs warm SIZExSIZE restores,
   the time per transformer run, peak GPU memory (nvidia-smi, sampled every 100 ms).
4. Rust, the last bundle: a --tiled-size restore (tiled, the reference has no tiling), and a --check-size restore
   on EP and on the CPU provider from the same noise (correctness of the provider path).
5. PyTorch: the converter's reference pipeline (dpir_export.reference) on the PyTorch modules, eager, the same
   number of warm runs, transformer runs timed between CUDA synchronisations. Its pre- and post-processing
   (resampling, wavelet colour fix) is numpy on the CPU, as in the converter's checks.
6. One restore of the same picture from the same starting noise through each bundle, compared with PyTorch's.
7. Memory budgets (--budgets GIB ...), the last bundle: for each, `dpir restore --dry-run --max-memory` (the
   tile, the estimate) and a SIZExSIZE restore within it (peak GPU memory, time, or the error): which card
   sizes the restore fits.

--device cpu --ep cpu runs the same steps without a GPU (on tiny models, with --onnxruntime-gpu naming any ONNX
Runtime library folder), to check the script itself; tools/test.sh does, and so does tools/device/rehearse.sh.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from full_size import ROOT, WORK, convert, make_models, sources

sys.path.insert(0, str(ROOT / "tools" / "export"))

DPIR = ROOT / "target" / "release" / "dpir"
ORT_LIBRARY = "libonnxruntime.so.1.31.1"


@contextmanager
def gpu_memory():
    """Samples the GPU's used memory with nvidia-smi while the block runs; yields a dict that gets `before_mib`
    (in use before the block) and `peak_mib` (the most in use during it, less `before_mib`); empty without
    nvidia-smi."""
    figures = {}
    smi = shutil.which("nvidia-smi")
    if smi is None:
        yield figures
        return
    query = [smi, "--query-gpu=memory.used", "--format=csv,noheader,nounits", "--id=0"]
    figures["before_mib"] = int(subprocess.run(query, capture_output=True, text=True).stdout.split()[0])
    sampler = subprocess.Popen(query + ["-lms", "100"], stdout=subprocess.PIPE, text=True)
    try:
        yield figures
    finally:
        sampler.terminate()
        samples = [int(v) for v in sampler.communicate()[0].split() if v.isdigit()]
        figures["peak_mib"] = max(samples, default=figures["before_mib"]) - figures["before_mib"]


def dpir(args, bundle, ep, *command):
    """The dpir CLI on `bundle` with `ep` and the GPU ONNX Runtime library."""
    return [DPIR, *command, "--model", bundle, "--ep", ep, "--ort-lib", args.onnxruntime_gpu / ORT_LIBRARY]


def run(command, env):
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{Path(command[0]).name} {command[1]} failed:\n{done.stdout}{done.stderr}")
    return done.stdout + done.stderr


def check_provider(args, env):
    """One restore of the oracle bundle on the provider, to fail in seconds rather than after the conversion."""
    if not (args.onnxruntime_gpu / "libonnxruntime_providers_cuda.so").exists():
        sys.exit(f"error: no CUDA provider in {args.onnxruntime_gpu}: run `python3 tools/fetch_onnxruntime.py --gpu`")
    picture = ROOT / "examples" / "images" / "landscape.png"
    oracle = ROOT / "tests" / "fixtures" / "bundles" / "oracle"
    run(dpir(args, oracle, args.ep, "restore", picture, WORK / "provider-check.png") + ["--steps", "1", "--quiet"],
        env)


def prepare(args):
    """Random models when missing, then one fp16 bundle per opset, converted in parallel; returns the bundles."""
    if args.bundle:
        return [args.bundle]
    bundles = [WORK / ("bundle-fp16" + ("" if o == 18 else f"-opset{o}")) for o in args.opset]
    missing = [(b, o) for b, o in zip(bundles, args.opset) if not (b / "dpir.json").exists()]
    if missing:
        make_models(sys.executable, args.models, args.maker)
    with ThreadPoolExecutor(len(missing) or 1) as pool:
        for done in [pool.submit(convert, sys.executable, args.models, bundle, "fp16", opset, "--no-verify",
                                 "--force") for bundle, opset in missing]:
            done.result()
    return bundles


def bench(args, bundle, env, size, runs, steps):
    """`dpir bench` of one size: load, first and best warm restore, time per transformer run, peak GPU memory."""
    with gpu_memory() as memory:
        out = run(dpir(args, bundle, args.ep, "bench") + ["--size", str(size), "--runs", str(runs),
                                                          "--steps", str(steps)], env)
    print(out, end="")
    load = float(re.search(r"loaded in ([0-9.]+) s", out).group(1))
    row = re.search(rf"^\s*{size}\s+single\s+(\d+)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)\s.*\s([0-9.]+)$", out, re.M)
    tiles, first, total, inside, per_step = (float(v) for v in row.groups())
    return {"load_s": load, "first_restore_s": first, "restore_s": total, "in_session_s": inside,
            "transformer_run_ms": per_step, "images_per_s": 1.0 / total, "tiles": int(tiles), **memory}


def within_budget(args, bundle, env, image, gib):
    """A restore of `image` with --max-memory `gib`: the tile and estimate of a dry run, then the restore's peak
    GPU memory and time, or the error it stopped with (a budget too small is refused with what it needs)."""
    budget = ["--max-memory", str(gib), "--steps", str(args.steps)]
    dry = subprocess.run(dpir(args, bundle, args.ep, "restore", image, WORK / "budget.npy") + budget
                         + ["--dry-run", "--quiet"], env=env, capture_output=True, text=True)
    figures = {"budget_gib": gib, "dry_run": (dry.stdout + dry.stderr).strip()}
    started = time.monotonic()
    with gpu_memory() as memory:
        done = subprocess.run(dpir(args, bundle, args.ep, "restore", image, WORK / "budget.npy") + budget
                              + ["--quiet"], env=env, capture_output=True, text=True)
    figures.update(memory, seconds=time.monotonic() - started, ok=done.returncode == 0, stderr=done.stderr.strip())
    print(f"  within {gib} GiB: {figures['dry_run']!r} -> {'ok' if figures['ok'] else figures['stderr']}"
          f"{'' if 'peak_mib' not in figures else ', peak GPU memory %d MiB' % figures['peak_mib']}, "
          f"{figures['seconds']:.1f} s")
    return figures


def restore(args, bundle, ep, env, image, noise, steps, save_noise):
    """One `dpir restore` of `image` from `noise` (saving it first when `save_noise`); returns the output."""
    output = WORK / f"gpu-{bundle.name}-{ep.replace(':', '')}-{Path(image).stem}.npy"
    start = ["--save-noise" if save_noise else "--noise", noise]
    run(dpir(args, bundle, ep, "restore", image, output) + ["--steps", str(steps), "--prompt", "zeros", *start,
                                                             "--quiet"], env)
    return np.load(output)


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


def pytorch(args, manifest, image, noise):
    """The reference pipeline in bf16 (transformer, CLIP) and fp32 (VAE); returns (figures, output)."""
    import torch
    from dpir_export import graphs, reference

    device = torch.device(args.device)
    # The decoder the bundle holds (the converter records it), so that both pipelines decode alike.
    decoder = manifest.get("provenance", {}).get("vae_decoder", "auto")
    job = {"args": dict(sources(args.models), vae_decoder=decoder)}
    started = time.perf_counter()
    modules = {}
    for name in ("vae_encoder", "vae_decoder", "clip_local", "clip_global", "transformer"):
        dtype = torch.float32 if name.startswith("vae") else torch.bfloat16
        modules[name] = graphs.load_module(name, job, log=lambda *_: None).to(device, dtype).eval()
    models = TimedModels(modules, device)
    load = time.perf_counter() - started
    text = np.zeros((manifest["text"]["tokens"], manifest["text"]["width"]), np.float32)

    def restore_once():
        models.transformer_seconds, models.transformer_runs = 0.0, 0
        start = time.perf_counter()
        output = reference.restore(models, manifest, image, noise, text, steps=args.steps)
        return time.perf_counter() - start, models.transformer_seconds, models.transformer_runs, output

    first = restore_once()[0]  # kernels chosen, memory pools grown
    best = min((restore_once() for _ in range(max(args.runs, 1))), key=lambda r: r[0])
    seconds, in_transformer, runs, output = best
    figures = {"load_s": load, "first_restore_s": first, "restore_s": seconds, "in_transformer_s": in_transformer,
               "transformer_run_ms": 1e3 * in_transformer / max(runs, 1), "images_per_s": 1.0 / seconds}
    if device.type == "cuda":
        figures["peak_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return figures, output


def differences(a, b):
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean())}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--runs", type=int, default=3, help="timed runs after the first; the best counts")
    ap.add_argument("--opset", type=int, nargs="+", choices=[18, 23], default=[18, 23],
                    help="convert and time a bundle of each of these opsets")
    ap.add_argument("--tiled-size", type=int, default=2048, help="also time one tiled restore of this size (0: no)")
    ap.add_argument("--preview-size", type=int, default=208,
                    help="also time a restore of this size at --steps: the GIMP dialog's preview, about 200 pixels "
                         "padded to the model's multiple (0: no)")
    ap.add_argument("--check-size", type=int, default=256,
                    help="compare EP and CPU restores of this size, 4 steps (0: no)")
    ap.add_argument("--bundle", type=Path, help="time this fp16 bundle of --models instead")
    ap.add_argument("--models", type=Path, default=WORK / "models", help="the PyTorch models (made when missing)")
    ap.add_argument("--maker", default="full_size", choices=["full_size", "tiny"],
                    help="dpir_export module that makes missing --models")
    ap.add_argument("--onnxruntime-gpu", type=Path, default=ROOT / "build" / "onnxruntime-gpu" / "lib")
    ap.add_argument("--device", default="cuda", help="PyTorch device")
    ap.add_argument("--ep", default="cuda", help="the runtime's execution provider")
    ap.add_argument("--budgets", type=float, nargs="*", default=[6, 8, 12],
                    help="memory budgets (GiB) to restore the last bundle's SIZExSIZE within")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--prepare-only", action="store_true", help="make the models and bundles, then stop")
    args = ap.parse_args()

    import torch

    WORK.mkdir(parents=True, exist_ok=True)
    # The runtime looks for the CUDA libraries in the active environment's packages: this Python's.
    env = dict(os.environ, VIRTUAL_ENV=sys.prefix)
    if not args.prepare_only and args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("error: PyTorch sees no CUDA device (use --device cpu --ep cpu to check the script without one)")
    if not args.prepare_only and args.ep != "cpu":
        check_provider(args, env)
    bundles = prepare(args)
    if args.prepare_only:
        return
    manifest = json.loads((bundles[0] / "dpir.json").read_text())
    card = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    report = {"device": card, "size": args.size, "steps": args.steps, "runs": args.runs}

    from dpir_export.reference import test_image

    picture, noise = WORK / f"gpu-input-{args.size}.npy", WORK / f"gpu-noise-{args.size}.npy"
    np.save(picture, test_image(args.size, args.size))
    outputs = {}
    for i, bundle in enumerate(bundles):
        report[f"rust_{bundle.name}"] = bench(args, bundle, env, args.size, args.runs, args.steps)
        outputs[bundle.name] = restore(args, bundle, args.ep, env, picture, noise, args.steps, save_noise=i == 0)
    last = bundles[-1]
    if args.tiled_size:
        report[f"rust_{last.name}_tiled"] = bench(args, last, env, args.tiled_size, 1, args.steps)
    if args.preview_size:
        report[f"rust_{last.name}_preview"] = bench(args, last, env, args.preview_size, args.runs, args.steps)
    if args.check_size:
        small, small_noise = WORK / f"gpu-input-{args.check_size}.npy", WORK / f"gpu-noise-{args.check_size}.npy"
        np.save(small, test_image(args.check_size, args.check_size))
        on_ep = restore(args, last, args.ep, env, small, small_noise, 4, save_noise=True)
        on_cpu = restore(args, last, "cpu", env, small, small_noise, 4, save_noise=False)
        report["rust_ep_vs_cpu"] = {"bundle": last.name, "size": args.check_size, "steps": 4,
                                    **differences(on_ep, on_cpu)}

    report["budgets"] = [within_budget(args, last, env, picture, gib) for gib in args.budgets]

    with gpu_memory() as memory:
        torch_figures, torch_output = pytorch(args, manifest, np.load(picture), np.load(noise))
    report["pytorch_bf16"] = {**torch_figures, **memory}
    for name, output in outputs.items():
        report[f"rust_{name}"]["vs_pytorch"] = differences(output, torch_output)
    summarise(report, args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


def summarise(report, args):
    """Prints one line per measured pipeline."""
    print(f"{report['device']}, {args.size}x{args.size}, {args.steps} steps, best of {args.runs} warm runs")
    torch_figures = report["pytorch_bf16"]
    for key, figures in report.items():
        if not key.startswith("rust_") or "images_per_s" not in figures:
            continue
        memory = f"; peak GPU memory {figures['peak_mib']} MiB" if "peak_mib" in figures else ""
        versus = figures.get("vs_pytorch")
        compared = f"; vs PyTorch, same noise: max abs {versus['max_abs']:.2e}" if versus else ""
        print(f"  Rust {key[5:]} on {args.ep}: {figures['images_per_s']:.3f} images/s ({figures['restore_s']:.2f} s, "
              f"first {figures['first_restore_s']:.2f} s, {figures['tiles']} tiles, "
              f"{figures['transformer_run_ms']:.1f} ms per transformer run; load {figures['load_s']:.1f} s{memory})"
              f"{compared}")
        if versus:
            print(f"    speed vs PyTorch: {torch_figures['restore_s'] / figures['restore_s']:.2f}x")
    if "rust_ep_vs_cpu" in report:
        check = report["rust_ep_vs_cpu"]
        print(f"  Rust {check['bundle']}, {check['size']}x{check['size']}, {args.ep} vs cpu: max abs "
              f"{check['max_abs']:.2e}, mean abs {check['mean_abs']:.2e}")
    memory = f"; peak GPU memory {torch_figures['peak_mib']} MiB" if "peak_mib" in torch_figures else ""
    print(f"  PyTorch reference, bf16: {torch_figures['images_per_s']:.3f} images/s "
          f"({torch_figures['restore_s']:.2f} s, first {torch_figures['first_restore_s']:.2f} s, "
          f"{torch_figures['transformer_run_ms']:.1f} ms per transformer run; load {torch_figures['load_s']:.1f} s"
          f"{memory})")


if __name__ == "__main__":
    main()
