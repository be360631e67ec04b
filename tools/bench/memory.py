#!/usr/bin/env python3
"""Memory of a restore on CPU, measured against dpir's estimate, with the full-size random bundle.

    build/export-venv/bin/python tools/bench/memory.py [--bundle build/full/bundle-fp32] [graphs] [restores]
        [budget]

graphs:   each graph's own activations, the peak resident memory of one run in a fresh process less the memory
          after loading it (ONNX Runtime 1.31.1 with dpir's session options), at three sizes: the numbers behind
          the coefficients in src/memory.rs.
restores: `dpir restore` of a 1024x1024 picture at three tile sizes in a fresh process each: its peak resident
          memory (getrusage) against `dpir restore --dry-run`'s estimate.
budget:   a 512x512 restore with no budget and with --max-memory = the transformer's weights + 3 GiB.
turns:    two 512x512 frames in one batch, unlimited and with a budget just under what holding every graph takes,
          which makes the stages take turns: what releasing and loading again costs.

Make the bundle first (tools/bench/full_size.py, or its two steps: `python -m dpir_export.full_size` and the
converter). The numbers go to README's "Memory".
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DPIR = ROOT / "target" / "release" / "dpir"
GIB = 1 << 30


def run_measured(command):
    """Runs a command; returns its output, its peak resident memory in bytes and its wall time."""
    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        log.seek(0)
        out = log.read()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{command} failed:\n{out}")
    return out, usage.ru_maxrss * 1024, time.monotonic() - started


def graph_child(path, feeds):
    """In a fresh process: load one graph as dpir does, run it once on zeros of the given shapes, print the
    resident memory after loading and at the peak."""
    import resource
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_mem_pattern = False
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    types = {i.name: i.type for i in session.get_inputs()}
    inputs = {name: np.zeros(shape, np.int64 if "int64" in types[name] else np.float32)
              for name, shape in feeds.items()}
    session.run(None, inputs)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"loaded": loaded, "peak": peak}))


def measure_graph(bundle, graph, feeds):
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import memory; " \
           f"memory.graph_child({str(bundle / graph)!r}, {feeds!r})"
    out, _, _ = run_measured([sys.executable, "-c", code])
    sample = json.loads(out.strip().splitlines()[-1])
    return sample["loaded"], sample["peak"] - sample["loaded"]


def fit(rows, columns):
    """Least-squares coefficients of `columns` (functions of a row's size) for the rows' measured bytes."""
    a = np.array([[f(size) for f in columns] for size, _ in rows], dtype=np.float64)
    b = np.array([measured for _, measured in rows], dtype=np.float64)
    return np.linalg.lstsq(a, b, rcond=None)[0]


def graphs(bundle, manifest):
    """Each graph's activations at three sizes, and the coefficients of src/memory.rs's formulas they give
    (float32 values of 4 bytes)."""
    arch = manifest["architecture"]
    c, d, p = manifest["latent"]["channels"], manifest["latent"]["downscale"], manifest["transformer"]["patch_size"]
    context = manifest["clip"]["clip_tokens"] + manifest["text"]["tokens"]
    width, pooled = manifest["transformer"]["context_width"], manifest["transformer"]["pooled_width"]
    size = manifest["clip"]["image_size"]
    print("graph          size                  resident after load   activations (peak - loaded)")
    rows = []
    for latent in (32, 64, 96):
        tokens = (latent // p) ** 2 + context
        feeds = {"hidden_states": [1, c, latent, latent], "timestep": [1], "lq_latent": [1, c, latent, latent],
                 "encoder_hidden_states": [1, context, width], "pooled_projections": [1, pooled]}
        loaded, act = measure_graph(bundle, "transformer.onnx", feeds)
        rows.append((tokens, act))
        print(f"transformer    {latent:3d} latent, {tokens:5d} tokens   {loaded / GIB:6.2f} GiB   {act / GIB:7.3f} GiB")
    heads, hidden = arch["transformer_heads"], arch["transformer_width"]
    scores, tokens = fit(rows, [lambda t: 4 * heads * t * t, lambda t: 4 * t * hidden])
    print(f"  TRANSFORMER_SCORES {scores:.2f}, TRANSFORMER_TOKENS {tokens:.1f}")
    for graph, name in (("vae_decoder.onnx", "latent"), ("vae_encoder.onnx", "image")):
        rows = []
        for latent in (40, 72, 104):
            shape = [1, c, latent, latent] if name == "latent" else [1, 3, latent * d, latent * d]
            loaded, act = measure_graph(bundle, graph, {name: shape})
            rows.append((latent * latent, act))
            print(f"{graph[:-5]:14s} {latent:3d} latent                {loaded / GIB:6.2f} GiB   {act / GIB:7.3f} GiB")
        attention = arch["vae_attention"]
        pixels, scores = fit(rows, [lambda s: 4 * arch["vae_width"] * s * d * d,
                                    lambda s: 4 * s * s if attention else 0.0])
        print(f"  VAE_PIXELS {pixels:.2f}, VAE_SCORES {scores:.2f}")
    rows = []
    for crops in (1, 8, 27):
        loaded, act = measure_graph(bundle, "clip_global.onnx", {"pixel_values": [crops, 3, size, size]})
        rows.append((crops, act))
        print(f"clip_global    {crops:2d} crops                 {loaded / GIB:6.2f} GiB   {act / GIB:7.3f} GiB")
    (clip,) = fit(rows, [lambda n: 4 * n * arch["clip_crop_tokens"] * arch["clip_width"]])
    print(f"  CLIP_TOKENS {clip:.1f}")


def picture(path, size):
    y, x = np.mgrid[0:size, 0:size] / size
    np.save(path, np.stack([x, y, 0.5 + 0.4 * np.sin(9 * x * y)], -1).astype(np.float32))


def estimate(bundle, image, *flags):
    out, _, _ = run_measured([DPIR, "restore", image, image.with_name("dry-run.npy"), "--model", bundle, "--dry-run",
                              *flags])
    peak = float(re.search(r"estimated peak memory: ([0-9.]+) GiB", out).group(1))
    return peak, out


def restores(bundle, work):
    image = work / "input-1024.npy"
    picture(image, 1024)
    print("tile (px)  tiles  estimate    measured peak RSS   estimate / measured   restore")
    for tile in (64, 96, 128):
        flags = ["--steps", "1", "--tile-size", str(tile)]
        guess, out = estimate(bundle, image, *flags)
        tiles = re.search(r"tiles: (\d+)", out).group(1)
        out, rss, wall = run_measured([DPIR, "restore", image, work / "out.npy", "--model", bundle, *flags])
        print(f"{tile * 8:9d}  {tiles:>5}  {guess:6.2f} GiB  {rss / GIB:6.2f} GiB          "
              f"{guess / (rss / GIB):5.2f}                 {wall:5.1f} s")


def budget(bundle, work):
    image = work / "input-512.npy"
    picture(image, 512)
    transformer = sum((bundle / f).stat().st_size for f in ("transformer.onnx", "transformer.onnx.data")
                      if (bundle / f).exists())
    limit = transformer / GIB + 3
    steps = ["--steps", "2"]
    for name, flags in (("no budget", []), (f"--max-memory {limit:.2f}", ["--max-memory", f"{limit:.2f}"])):
        guess, out = estimate(bundle, image, *steps, *flags)
        tile = re.search(r"tile size (\d+) pixels", out).group(1)
        out, rss, wall = run_measured([DPIR, "restore", image, work / "out.npy", "--model", bundle, *steps, *flags])
        print(f"512x512, {name}: tile size {tile} px, estimate {guess:.2f} GiB, peak RSS {rss / GIB:.2f} GiB, "
              f"{wall:.1f} s (load and restore)")


def turns(bundle, work):
    """Two frames in one batch, unlimited and within a budget just under what holding every graph takes: the
    second run releases the encoders before each frame's sampling and loads them again for the next frame."""
    from PIL import Image
    image = work / "input-512.npy"
    picture(image, 512)
    steps = ["--steps", "2"]
    frames = work / "frames"
    frames.mkdir(exist_ok=True)
    for i in (1, 2):
        Image.fromarray((np.load(image) * 255).round().astype(np.uint8)).save(frames / f"f{i}.png")
    together, _ = estimate(bundle, image, *steps)
    tight = together - 0.05
    guess, out = estimate(bundle, image, *steps, "--max-memory", f"{tight:.2f}")
    print(f"--max-memory {tight:.2f}: {out.strip().splitlines()[-1]}")
    for name, flags in (("no budget", []), (f"--max-memory {tight:.2f}", ["--max-memory", f"{tight:.2f}"])):
        out_dir = work / "frames-out"
        subprocess.run(["rm", "-rf", out_dir])
        out, rss, wall = run_measured([DPIR, "restore", frames, out_dir, "--model", bundle, *steps, *flags])
        print(f"two 512x512 frames, {name}: peak RSS {rss / GIB:.2f} GiB, {wall:.1f} s")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=ROOT / "build" / "full" / "bundle-fp32")
    ap.add_argument("parts", nargs="*", default=["graphs", "restores", "budget", "turns"])
    args = ap.parse_args()
    manifest = json.loads((args.bundle / "dpir.json").read_text())
    work = ROOT / "build" / "full" / "memory"
    work.mkdir(parents=True, exist_ok=True)
    for part in args.parts:
        print(f"== {part}", flush=True)
        {"graphs": lambda: graphs(args.bundle, manifest), "restores": lambda: restores(args.bundle, work),
         "budget": lambda: budget(args.bundle, work), "turns": lambda: turns(args.bundle, work)}[part]()


if __name__ == "__main__":
    main()
