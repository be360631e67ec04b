"""Images per second of the ways to restore a folder, on the same pictures with the same model and options:
separate `dpir restore` calls, one `dpir restore` over the folder, the Python package (a loop of
Restorer.restore_file), and dpir.ray with 1 and 2 workers on a local Ray cluster; against the model's own work
(Restorer.restore on decoded arrays), whose difference per image is each path's overhead (process starts, model
loads, file decoding and encoding, scheduling). Each figure is the best of two runs.

    build/venv/bin/python tools/bench/batch.py [--images 32] [--size 512] [--steps 28] [--model DIR]

Needs tools/setup.sh and tools/setup-tests.sh (the CLI, and build/venv with the installed wheel and Ray), as
tools/test.sh leaves them. Prints a table; timings are not checked. Target: a batch path spends at most 10% of the
model's time per image on everything else (CLI batch and Python package); Ray's scheduling is measured, not
targeted.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import dpir
import dpir.batch
import dpir.ray

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / "target" / "release" / "dpir"


def pictures(folder: Path, count: int, size: int) -> None:
    """`count` different smooth pictures with detail, `size` square, as PNG."""
    folder.mkdir(parents=True)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for index in range(count):
        planes = [0.5 + 0.4 * np.sin(x * (9 + index) + c) * np.cos(y * (7 + c) - index) for c in range(3)]
        Image.fromarray((np.stack(planes, -1) * 255).astype(np.uint8)).save(folder / f"p{index:03d}.png")


def timed(action, outputs: Path = None, runs: int = 2) -> float:
    """The best of `runs` timings of `action`, each after removing what the last wrote to `outputs`."""
    best = float("inf")
    for _ in range(runs):
        if outputs is not None:
            shutil.rmtree(outputs, ignore_errors=True)
        started = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--model", type=Path, default=ROOT / "tests" / "fixtures" / "bundles" / "tiny")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="dpir-bench-batch-"))
    try:
        folder = scratch / "in"
        pictures(folder, args.images, args.size)
        options = ["--model", str(args.model), "--steps", str(args.steps), "--quiet"]
        results = {}

        restorer = dpir.Restorer(args.model)
        arrays = [np.asarray(Image.open(path)) for path, _ in dpir.batch.files(folder, scratch / "unused")]
        restorer.restore(arrays[0], steps=args.steps)  # the first run pays for kernel selection
        results["model alone (restore on decoded arrays)"] = timed(
            lambda: [restorer.restore(a, steps=args.steps) for a in arrays]
        )

        def separate_calls():
            for path, output in dpir.batch.files(folder, scratch / "separate"):
                output.parent.mkdir(exist_ok=True)
                subprocess.run([CLI, "restore", path, output, *options], check=True, stderr=subprocess.DEVNULL)

        results[f"{args.images} separate CLI calls"] = timed(separate_calls, scratch / "separate")
        results["CLI batch (dpir restore FOLDER OUT)"] = timed(
            lambda: subprocess.run([CLI, "restore", folder, scratch / "batch", *options], check=True), scratch / "batch"
        )

        def package_loop():
            for path, output in dpir.batch.files(folder, scratch / "python"):
                output.parent.mkdir(exist_ok=True)
                restorer.restore_file(path, output, steps=args.steps)

        results["Python package (restore_file loop)"] = timed(package_loop, scratch / "python")

        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=150 * 1024 * 1024)
        for workers in (1, 2):
            jobs = dpir.batch.files(folder, scratch / f"ray{workers}")
            threads = 2 // workers  # the machine's cores shared between the workers
            name = f"Ray, {workers} worker(s) of {threads} thread(s)"
            results[name] = timed(
                lambda: dpir.ray.restore(jobs, args.model, workers=workers, threads=threads, steps=args.steps),
                scratch / f"ray{workers}",
            )
        ray.shutdown()

        model = results["model alone (restore on decoded arrays)"] / args.images
        print(f"{args.images} images of {args.size}x{args.size}, {args.steps} steps, {args.model.name} bundle, CPU")
        print(f"{'path':<44} {'total s':>8} {'images/s':>9} {'overhead ms/image':>18}")
        for name, seconds in results.items():
            per_image = seconds / args.images
            print(f"{name:<44} {seconds:>8.2f} {1 / per_image:>9.2f} {(per_image - model) * 1e3:>18.1f}")
    finally:
        shutil.rmtree(scratch)


if __name__ == "__main__":
    sys.exit(main())
