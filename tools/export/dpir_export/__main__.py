"""dpir_export: convert the official DPIR PyTorch release into a dpir model bundle, and verify it.

    python -m dpir_export --sd3 DIR --dpir-transformer CKPT_OR_DIR --vae-encoder DIR --clip-b32 DIR
        --clip-bigg DIR [--t5 DIR] [--prompt [NAME=]TEXT ...] --dtype fp16|bf16|fp32 --out BUNDLE

Every heavy step (loading and exporting one graph, checking one graph, the T5 prompts, the PyTorch reference
restore) runs in its own Python process, so memory is given back between steps. Verification is on by default:
each graph on ONNX Runtime against its PyTorch module on random inputs, then one full restore through the Rust CLI
(`target/release/dpir`) against the PyTorch reference pipeline (reference.py) from the same starting noise.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import job as jobmod

REPO = Path(__file__).resolve().parents[3]
BUNDLE_FILES = ("dpir.json", "vae_encoder.onnx", "vae_decoder.onnx", "clip_local.onnx", "clip_global.onnx",
                "transformer.onnx", "t5.onnx", "tokenizer.json")

# Largest accepted max abs difference on [0, 1] pixels between the Rust CLI on the bundle and the float32 PyTorch
# reference, per dtype (the reference is float32 whatever the bundle's dtype).
RESTORE_TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2, "bf16": 1e-1}


def parse(argv):
    ap = argparse.ArgumentParser(prog="python -m dpir_export", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = ap.add_argument_group("sources (local paths only; nothing is downloaded)")
    src.add_argument("--sd3", required=True, help="SD3-medium in diffusers layout (transformer/ and vae/ configs, "
                     "vae/ weights, scheduler/; text_encoder_3/ + tokenizer_3/ for prompts)")
    src.add_argument("--dpir-transformer", required=True,
                     help="DPIR transformer: consolidated.00-of-01.pth (keys prefixed module.) or a "
                          "save_pretrained directory")
    src.add_argument("--vae-encoder", required=True,
                     help="degradation-robust VAE: AutoencoderKL directory or checkpoint file (whole or encoder-only)")
    src.add_argument("--clip-b32", required=True, help="CLIP ViT-B/32 (transformers CLIPModel or vision directory)")
    src.add_argument("--clip-bigg", required=True, help="CLIP ViT-bigG/14 (transformers CLIPModel or vision directory)")
    src.add_argument("--t5", help="T5 encoder directory (default for --prompt: SD3's text_encoder_3)")
    out = ap.add_argument_group("bundle")
    out.add_argument("--dtype", required=True, choices=["fp16", "bf16", "fp32"])
    out.add_argument("--out", required=True, help="bundle directory to write")
    out.add_argument("--force", action="store_true", help="overwrite the bundle files of an existing --out")
    out.add_argument("--prompt", action="append", metavar="[NAME=]TEXT",
                     help="precompute the T5 block of this caption into prompts/NAME.npy (repeatable)")
    out.add_argument("--default-prompt", default="zeros", help="text.default: 'zeros' or a --prompt NAME")
    out.add_argument("--export-t5", action="store_true",
                     help="also write t5.onnx + tokenizer.json, so that any caption can be encoded at run time")
    out.add_argument("--vae-decoder", choices=["auto", "dpir", "sd3"], default="auto",
                     help="whose decoder to export: auto takes the degradation-robust VAE's when it has one that "
                          "differs from SD3's (as the official script decodes), else SD3's")
    out.add_argument("--vae-compute", choices=["fp32", "dtype"], default="fp32",
                     help="the VAE computes in float32 inside (official default) or in --dtype")
    out.add_argument("--opset", type=int, choices=[18, 23], default=18,
                     help="ONNX opset: 23 writes attention as the standard Attention op, which ONNX Runtime's CUDA "
                          "provider runs with fused (flash / memory-efficient) kernels")
    out.add_argument("--name", default="dpir-sd3-medium")
    out.add_argument("--description", default="")
    man = ap.add_argument_group("manifest numbers (defaults: the real model)")
    man.add_argument("--clip-tokens", type=int, default=77)
    man.add_argument("--text-tokens", type=int, default=256)
    man.add_argument("--global-tile", type=int, default=1024)
    man.add_argument("--global-overlap", type=int, default=64)
    man.add_argument("--clip-input", choices=["lq", "initial_restoration"], default="lq")
    man.add_argument("--steps", type=int, default=28)
    man.add_argument("--guidance", type=float, default=1.0)
    man.add_argument("--seed", type=int, default=1234)
    man.add_argument("--latent-tile", type=int, default=128)
    man.add_argument("--latent-overlap", type=int, default=16)
    ver = ap.add_argument_group("verification")
    ver.add_argument("--no-verify", action="store_true", help="skip every check")
    ver.add_argument("--no-verify-restore", action="store_true", help="skip the end-to-end restore check")
    ver.add_argument("--verify-steps", type=int, default=4)
    ver.add_argument("--verify-size", default="72x56", help="HxW of the synthetic test image")
    ver.add_argument("--verify-extended", action="store_true",
                     help="more restores: scale 1.25 with guidance 2.5 and the first prompt; CLIP on the initial "
                          "restoration; a caption through t5.onnx (with --export-t5)")
    ver.add_argument("--dpir-cli", default=str(REPO / "target" / "release" / "dpir"),
                     help="the Rust CLI (bash tools/setup.sh builds it)")
    ver.add_argument("--isolate", choices=["auto", "always", "never"], default="auto",
                     help="run each step in its own process (auto: when the checkpoints exceed 1 GiB, so that "
                          "memory is given back between steps; small models run in one process)")
    ver.add_argument("--keep-work", action="store_true", help="keep the scratch folder (inputs, noise, outputs)")
    return ap.parse_args(argv)


def human(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024


class Runner:
    """Runs worker steps (worker.py), each in a child process when `isolate`, else in this process."""

    def __init__(self, job, work, isolate):
        self.job = job
        self.job_file = Path(work) / "job.json"
        self.isolate = isolate
        jobmod.save(job, self.job_file)
        if not isolate:
            from . import worker

            worker.setup()

    def __call__(self, step, *args):
        if not self.isolate:
            from . import worker
            from .weights import CheckpointError

            try:
                worker.run_step(step, self.job, *map(str, args))
            except CheckpointError as e:
                raise SystemExit(f"error: {e}")
            return
        cmd = [sys.executable, "-m", "dpir_export.worker", step, str(self.job_file), *map(str, args)]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1])]
                                                          + [p for p in [os.environ.get("PYTHONPATH")] if p]))
        result = subprocess.run(cmd, env=env)
        if result.returncode != 0:
            raise SystemExit(f"error: step '{step} {' '.join(map(str, args))}' failed (exit {result.returncode}); "
                             f"its messages are above")


def ort_library():
    """The ONNX Runtime library of this environment's onnxruntime package, for the Rust CLI."""
    import onnxruntime

    capi = Path(onnxruntime.__file__).parent / "capi"
    libs = sorted(capi.glob("libonnxruntime.so*"))
    return str(libs[-1]) if libs else None


def restore_cases(args, job, work):
    h, w = (int(v) for v in args.verify_size.lower().split("x"))
    cases = [{"name": "default", "size": [h, w], "scale": 1.0, "steps": args.verify_steps, "guidance": 1.0,
              "prompt": job["manifest"]["text"]["default"], "prompt_text": None, "clip_input": "lq"}]
    if args.verify_extended:
        prompts = list(job["prompts"])
        cases.append({"name": "guided", "size": [h, w], "scale": 1.25, "steps": args.verify_steps,
                      "guidance": 2.5, "prompt": prompts[0] if prompts else "zeros", "prompt_text": None,
                      "clip_input": "lq"})
        # CLIP on the initial restoration D(E(LQ)) with one global tile: the Rust runtime encodes and decodes each
        # global tile on its own, which equals PROCEDURE.md's crop of the whole-frame reconstruction only when one
        # tile covers the image (see the README).
        tile = job["manifest"]["clip"]["global_tile"]
        cases.append({"name": "initial", "size": [min(h, tile), min(w, tile)], "scale": 1.0,
                      "steps": args.verify_steps, "guidance": 1.0, "prompt": "zeros", "prompt_text": None,
                      "clip_input": "initial_restoration"})
        if args.export_t5:
            cases.append({"name": "caption", "size": [h, w], "scale": 1.0, "steps": args.verify_steps,
                          "guidance": 1.0, "prompt": "zeros", "prompt_text": "a sharp detailed landscape photo",
                          "clip_input": "lq"})
    for case in cases:
        for key in ("input", "noise", "reference", "output"):
            case[key] = str(Path(work) / f"{case['name']}_{key}.npy")
    return cases


def verify_restore(args, job, run, work):
    import numpy as np

    from .reference import padded_size, test_image

    cli = Path(args.dpir_cli)
    if not cli.is_file():
        raise SystemExit(f"error: the Rust CLI {cli} is missing: build it with `bash tools/setup.sh` (or pass "
                         f"--dpir-cli, or --no-verify-restore). The bundle in {args.out} is written but not verified "
                         f"end to end.")
    man = job["manifest"]
    env = dict(os.environ)
    if not any(k in env for k in ("DPIR_ORT_LIB", "ORT_DYLIB_PATH")) and ort_library():
        env["DPIR_ORT_LIB"] = ort_library()
    results = []
    for case in restore_cases(args, job, work):
        h, w = case["size"]
        image = test_image(h, w)
        np.save(case["input"], image)
        _, _, hp, wp = padded_size(man, h, w, case["scale"])
        d = man["latent"]["downscale"]
        noise = np.random.default_rng(1234).standard_normal((1, man["latent"]["channels"], hp // d, wp // d),
                                                            dtype=np.float32)
        np.save(case["noise"], noise)
        case_file = Path(work) / f"{case['name']}_case.json"
        case_file.write_text(json.dumps(case))
        run("reference", case_file)
        cmd = [str(cli), "restore", case["input"], case["output"], "--model", args.out, "--noise", case["noise"],
               "--steps", str(case["steps"]), "--scale", str(case["scale"]), "--guidance", str(case["guidance"]),
               "--clip-input", case["clip_input"].replace("_", "-"), "--quiet"]
        cmd += ["--prompt-text", case["prompt_text"]] if case["prompt_text"] is not None else ["--prompt", case["prompt"]]
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"error: the Rust CLI failed on the bundle:\n  {' '.join(cmd)}\n{proc.stderr.strip()}")
        got, want = np.load(case["output"]), np.load(case["reference"])
        if got.shape != want.shape:
            raise SystemExit(f"error: restore {case['name']}: Rust output {got.shape}, reference {want.shape}")
        err = float(np.max(np.abs(got.astype(np.float64) - want)))
        mean = float(np.mean(np.abs(got.astype(np.float64) - want)))
        tol = RESTORE_TOLERANCE[args.dtype]
        ok = err <= tol
        what = (f"{case['size'][1]}x{case['size'][0]} x{case['scale']}, {case['steps']} steps, guidance {case['guidance']}, "
                f"prompt {case['prompt_text'] and 'text' or case['prompt']}, CLIP on {case['clip_input']}")
        print(f"  restore {case['name']} ({what}): Rust CLI vs PyTorch reference max abs {err:.2e}, mean "
              f"{mean:.2e} on [0,1] pixels (tolerance {tol:.0e}): {'ok' if ok else 'FAILED'} "
              f"(Rust {time.perf_counter() - start:.1f} s)", flush=True)
        results.append({"case": case["name"], "max_abs": err, "mean_abs": mean, "tolerance": tol, "ok": ok})
    return results


def source_bytes(args):
    """Total size of the weight files under the given sources."""
    total = 0
    for src in (args.dpir_transformer, args.vae_encoder, args.clip_b32, args.clip_bigg, args.t5,
                Path(args.sd3) / "vae"):
        if not src:
            continue
        src = Path(src)
        files = [src] if src.is_file() else [p for p in src.rglob("*") if p.is_file()]
        total += sum(p.stat().st_size for p in files)
    return total


def prepare_out(args):
    out = Path(args.out)
    if out.exists():
        present = [f for f in BUNDLE_FILES if (out / f).exists()] + (["prompts"] if (out / "prompts").exists() else [])
        others = [p.name for p in out.iterdir() if p.name not in BUNDLE_FILES and p.name != "prompts"
                  and not p.name.endswith(".onnx.data")]
        if (present or others) and not args.force:
            raise SystemExit(f"error: {out} is not empty; pass --force to overwrite a bundle there")
        if others:
            raise SystemExit(f"error: {out} holds files that are not part of a bundle ({', '.join(others[:5])}); "
                             f"choose another --out")
        for f in list(out.iterdir()):
            shutil.rmtree(f) if f.is_dir() else f.unlink()
    out.mkdir(parents=True, exist_ok=True)


def main(argv=None):
    args = parse(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    try:
        plan = jobmod.plan(vars(args))
    except jobmod.JobError as e:
        raise SystemExit(f"error: {e}")
    prepare_out(args)
    work = Path(tempfile.mkdtemp(prefix="dpir-export-"))
    job = dict(plan, args=vars(args), bundle=str(Path(args.out).resolve()), work=str(work))
    man = job["manifest"]
    man["description"] = args.description or (
        f"DPIR converted by dpir_export from {Path(args.dpir_transformer).name} (SD3 {Path(args.sd3).name}, "
        f"VAE encoder {Path(args.vae_encoder).name}, CLIP {Path(args.clip_b32).name} + {Path(args.clip_bigg).name}); "
        f"{args.dtype}")
    isolate = args.isolate == "always" or (args.isolate == "auto" and source_bytes(args) > 1024 ** 3)
    run = Runner(job, work, isolate)
    print(f"dpir_export: {args.dtype} bundle into {args.out}", flush=True)
    try:
        for i, graph in enumerate(jobmod.GRAPHS):
            print(f"[{i + 1}/5] {graph}", flush=True)
            run("export", graph)
        if job["prompts"] or args.export_t5:
            print("[text] T5", flush=True)
            run("prompts")
        # What the export steps chose or found: the decoder's source, the position embedding's.
        man["provenance"] = {k: v for f in ("vae_decoder.json", "pos_embed.json") for k, v in
                             json.loads((work / f).read_text()).items()}
        Path(args.out, "dpir.json").write_text(json.dumps(man, indent=2) + "\n")

        checks, restores = [], []
        if not args.no_verify:
            print("verifying: each graph on ONNX Runtime against PyTorch (float32) on random inputs", flush=True)
            for graph in jobmod.GRAPHS + (("t5",) if args.export_t5 else ()):
                run("check", graph)
                checks.append(json.loads((work / f"check_{graph}.json").read_text()))
            if not args.no_verify_restore:
                print("verifying: full restores through the Rust CLI against the PyTorch reference pipeline",
                      flush=True)
                restores = verify_restore(args, job, run, work)
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"scratch files kept in {work}")

    out = Path(args.out)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in files)
    print(f"\nwrote {out} ({human(total)}, {man['dtype']}) in {time.perf_counter() - started:.0f} s:")
    for p in files:
        print(f"  {str(p.relative_to(out)):<28} {human(p.stat().st_size):>12}")
    for c in checks:
        print(f"  check {c['graph']:<12} rel {c['rel']:.2e} <= {c['tolerance']:.0e}: {'ok' if c['ok'] else 'FAILED'}")
    for r in restores:
        print(f"  restore {r['case']:<10} max abs {r['max_abs']:.2e} <= {r['tolerance']:.0e}: "
              f"{'ok' if r['ok'] else 'FAILED'}")
    if args.no_verify:
        print("  (not verified: --no-verify)")
    failed = [c["graph"] for c in checks if not c["ok"]] + [r["case"] for r in restores if not r["ok"]]
    if failed:
        raise SystemExit(f"error: verification failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
