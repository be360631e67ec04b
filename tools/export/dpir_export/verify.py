"""Checks of a written bundle: each graph on ONNX Runtime against its PyTorch module, on random inputs."""

import ctypes
import os
import time
from pathlib import Path

import numpy as np
import torch

from . import graphs

# Largest accepted max|ONNX Runtime - PyTorch float32| / max|PyTorch float32|, per bundle dtype. The reference is
# always the float32 PyTorch module on the same inputs (rounded to the dtype where the graph takes them in it), so
# the figure includes what the dtype itself costs, not only the export.
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 5e-2}

ONNX_BFLOAT16 = 16


def session(path, threads=0):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _feed(array, onnx_type):
    import onnxruntime as ort

    if onnx_type == "tensor(bfloat16)":
        bits = torch.from_numpy(np.ascontiguousarray(array, np.float32)).to(torch.bfloat16).view(torch.int16)
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(bits.numpy().view(np.uint16), ONNX_BFLOAT16)
    if onnx_type == "tensor(float16)":
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array, np.float16))
    if onnx_type == "tensor(int64)":
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array, np.int64))
    return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array, np.float32))


def _fetch(value):
    """An OrtValue as float32 numpy (bfloat16 read through its buffer: numpy has no bfloat16)."""
    if value.data_type() == "tensor(bfloat16)":
        shape = value.shape()
        n = int(np.prod(shape))
        raw = np.ctypeslib.as_array((ctypes.c_uint16 * n).from_address(value.data_ptr())).copy()
        return torch.from_numpy(raw.view(np.int16)).view(torch.bfloat16).float().numpy().reshape(shape)
    return np.asarray(value.numpy(), np.float32)


def run_onnx(sess, inputs):
    """Run a session on float32 numpy inputs, converted to each input's declared type; float32 outputs."""
    feeds = {meta.name: _feed(x, meta.type) for meta, x in zip(sess.get_inputs(), inputs)}
    names = [o.name for o in sess.get_outputs()]
    return [_fetch(v) for v in sess.run_with_ort_values(names, feeds)]


def cases(name):
    """(batch, size index) pairs: batch 1 and 2 at different spatial sizes (odd patch counts included)."""
    out = [(1, 0), (2, 1)]
    if name == "vae_decoder":
        out.append((1, 2))
    return out


def check_graph(name, job, bundle, log=print):
    """Compare graph `name` of the bundle with its PyTorch module; returns a result dict."""
    start = time.perf_counter()
    dtype = job["args"]["dtype"]
    manifest = job["manifest"]
    io = graphs.compute_dtypes(dtype, "fp32")[0]
    # what the graph receives: floating inputs rounded to the io dtype (not those it takes in float32), as float32
    inputs = [[x.float() if x.is_floating_point() else x
               for x in graphs.io_inputs(name, graphs.example_inputs(name, manifest, batch, index), io)]
              for batch, index in cases(name)]

    sess = session(Path(bundle) / f"{name}.onnx", threads=int(os.environ.get("DPIR_EXPORT_THREADS", "0")))
    onnx_out = [run_onnx(sess, [x.numpy() for x in case]) for case in inputs]
    del sess

    module = graphs.load_module(name, job, log=lambda *_: None).eval()
    worst = 0.0
    details = []
    with torch.no_grad():
        for case, got in zip(inputs, onnx_out):
            want = module(*case)
            want = want if isinstance(want, tuple) else (want,)
            for out_name, w, g in zip(module.output_names, want, got):
                w = w.float().numpy()
                if w.shape != g.shape:
                    raise AssertionError(f"{name}.{out_name}: ONNX shape {g.shape}, PyTorch {w.shape}")
                err = float(np.max(np.abs(w - g)))
                scale = float(np.max(np.abs(w))) or 1.0
                worst = max(worst, err / scale)
                details.append(f"{out_name}{tuple(g.shape)}: max abs {err:.2e}, rel {err / scale:.2e}")
    ok = worst <= TOLERANCE[dtype] and np.isfinite(worst)
    log(f"  {name}: {'ok' if ok else 'FAILED'}: max rel error {worst:.2e} (tolerance {TOLERANCE[dtype]:.0e} for "
        f"{dtype}) in {time.perf_counter() - start:.1f} s")
    for line in details:
        log(f"    {line}")
    return {"graph": name, "ok": bool(ok), "rel": worst, "tolerance": TOLERANCE[dtype], "details": details}
