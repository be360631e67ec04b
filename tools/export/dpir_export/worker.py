"""One step of a conversion, in its own process: `python -m dpir_export.worker STEP JOB.json [ARG]`.

Steps: `export GRAPH`, `check GRAPH`, `prompts`, `reference CASE.json`. Results go to files named in the job.
"""

import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path


def quiet():
    """Silence the libraries' progress bars and advisory warnings; the converter prints its own progress."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as tlog

        tlog.disable_progress_bar()
        tlog.set_verbosity_error()
    except ImportError:
        pass


def log(*parts):
    print(*parts, flush=True)


def step_export(job, graph):
    from . import graphs

    graphs.export(graph, job, job["bundle"], log=log)


def step_check(job, graph):
    from . import verify

    result = verify.check_graph(graph, job, job["bundle"], log=log)
    Path(job["work"], f"check_{graph}.json").write_text(json.dumps(result))


def step_prompts(job):
    import numpy as np

    from . import models

    start = time.perf_counter()
    if job["args"].get("export_t5"):
        from . import graphs

        graphs.export("t5", job, job["bundle"], log=log)
        tokenizer, _ = models.load_t5_tokenizer(job["t5"])
        tokenizer.backend_tokenizer.save(str(Path(job["bundle"]) / "tokenizer.json"))
        log("  wrote tokenizer.json")
    if not job["prompts"]:
        return
    t5, tokenizer = models.load_t5(job["t5"], log=log)
    tokens = job["manifest"]["text"]["tokens"]
    out = Path(job["bundle"]) / "prompts"
    out.mkdir(exist_ok=True)
    for name, text in job["prompts"].items():
        block = models.t5_embed(t5, tokenizer, text, tokens).numpy().astype(np.float32)
        np.save(out / f"{name}.npy", block)
        log(f"  prompts/{name}.npy {block.shape}: {text!r}")
    log(f"  {len(job['prompts'])} prompt(s) in {time.perf_counter() - start:.1f} s")


def step_reference(job, case_file):
    """The PyTorch reference restore of one verification case (see reference.py)."""
    import numpy as np

    from . import graphs, models, reference

    case = json.loads(Path(case_file).read_text())
    start = time.perf_counter()
    man = job["manifest"]
    prompt = case["prompt"]
    if case.get("prompt_text") is not None:  # T5 first, and let it go before the other models load
        t5, tokenizer = models.load_t5(job["t5"], log=lambda *_: None)
        text = models.t5_embed(t5, tokenizer, case["prompt_text"], man["text"]["tokens"]).numpy()
        del t5
    elif prompt == "zeros":
        text = np.zeros((man["text"]["tokens"], man["text"]["width"]), np.float32)
    else:
        text = np.load(Path(job["bundle"]) / man["text"]["prompts"][prompt]).astype(np.float32)
    modules = {name: graphs.load_module(name, job, log=lambda *_: None).eval() for name in
               ("vae_encoder", "vae_decoder", "clip_local", "clip_global", "transformer")}
    image = np.load(case["input"])
    noise = np.load(case["noise"])
    out = reference.restore(reference.Models(modules), man, image, noise, text, scale=case["scale"],
                            steps=case["steps"], guidance=case["guidance"], clip_input=case["clip_input"])
    np.save(case["reference"], out)
    log(f"  reference {case['name']}: {out.shape[1]}x{out.shape[0]} in {time.perf_counter() - start:.1f} s")


def run_step(step, job, *args):
    if step == "export":
        step_export(job, args[0])
    elif step == "check":
        step_check(job, args[0])
    elif step == "prompts":
        step_prompts(job)
    elif step == "reference":
        step_reference(job, args[0])
    else:
        raise SystemExit(f"unknown step {step}")


def setup():
    quiet()
    import torch

    torch.manual_seed(0)
    threads = int(os.environ.get("DPIR_EXPORT_THREADS", "0"))
    if threads:
        torch.set_num_threads(threads)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    setup()
    from . import job as jobmod

    from .weights import CheckpointError

    try:
        run_step(argv[0], jobmod.load(argv[1]), *argv[2:])
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
