"""Building, exporting and post-processing the bundle graphs (the five of the contract, and the optional t5).

Precision per `--dtype` (the manifest's `dtype` is the element type of every graph's inputs and outputs, except the
transformer's `timestep`, float32 in every dtype: see models.TransformerGraph):

* fp32: everything in float32.
* fp16: CLIP towers, transformer (and T5) converted to float16 in PyTorch and exported so (converting an fp32
  ONNX file afterwards is less accurate: the timestep embedding's sin/cos would land in fp16). The VAE computes in
  float32 inside (the official default) with float16 inputs and outputs, unless `--vae-compute dtype`.
* bf16: ONNX Runtime has no bfloat16 kernels for convolutions and most other ops on the CPU, so a graph that
  computes in bfloat16 would not load. CLIP towers, transformer (and T5) store their weights in bfloat16 (the
  precision the official code runs them in; half the size of fp32) and compute in float32 after a Cast at load;
  inputs and outputs are bfloat16. The VAE stays float32 inside.
"""

import json
import os
import time
from pathlib import Path

import torch

from . import models, provenance

TWO_GB = 2 * 1024 ** 3


def compute_dtypes(dtype, vae_compute):
    """(io dtype, compute dtype of CLIP + transformer, compute dtype of the VAE, store weights as bf16)."""
    io = models.DTYPES[dtype]
    main = torch.float16 if dtype == "fp16" else torch.float32
    vae = main if vae_compute == "dtype" else torch.float32
    return io, main, vae, dtype == "bf16"


def load_module(name, job, log=print):
    """The float32 PyTorch module of graph `name`, with float32 inputs and outputs."""
    a = job["args"]
    if name == "vae_encoder":
        vae, _ = models.load_vae_encoder(a["vae_encoder"], a["sd3"], log=log)
        return models.VaeEncoderGraph(vae)
    if name == "vae_decoder":
        source = provenance.choose_decoder(a["vae_encoder"], a["sd3"], a.get("vae_decoder", "auto"), log=log)
        if source == "dpir":
            vae, _ = models.load_vae_encoder(a["vae_encoder"], a["sd3"], log=log)
        else:
            vae = models.load_vae_decoder(a["sd3"], log=log)
        graph = models.VaeDecoderGraph(vae)
        graph.provenance = {"vae_decoder": source}
        return graph
    if name == "clip_local":
        return models.ClipLocalGraph(models.load_clip(a["clip_b32"], log=log))
    if name == "clip_global":
        return models.ClipGlobalGraph(models.load_clip(a["clip_bigg"], log=log))
    if name == "transformer":
        transformer = models.load_transformer(a["sd3"], a["dpir_transformer"], log=log)
        graph = models.TransformerGraph(transformer)
        graph.provenance = transformer.pos_embed_source
        return graph
    if name == "t5":
        return models.T5Graph(models.load_t5(job["t5"], log=log)[0])
    raise ValueError(name)


def example_inputs(name, manifest, batch, size_index=0):
    """Random float32 inputs for graph `name`. size_index picks one of a few spatial sizes (odd patch counts
    included) so that checks exercise the dynamic axes; batch is the batch size."""
    g = torch.Generator().manual_seed(1000 * size_index + batch)
    lat, tr, clip, text = manifest["latent"], manifest["transformer"], manifest["clip"], manifest["text"]
    c, d, p = lat["channels"], lat["downscale"], tr["patch_size"]
    m = d * p
    pixel_sizes = [(4 * m, 3 * m), (2 * m, 5 * m), (3 * m, 3 * m)]
    latent_sizes = [(4 * p, 3 * p), (3 * p, 5 * p), (5, 7)]  # the last only for the decoder (any size)
    if name == "vae_encoder":
        h, w = pixel_sizes[size_index % 3]
        return (torch.rand(batch, 3, h, w, generator=g) * 2 - 1,)
    if name == "vae_decoder":
        h, w = latent_sizes[size_index % 3]
        return (torch.randn(batch, c, h, w, generator=g),)
    if name in ("clip_local", "clip_global"):
        s = clip["image_size"]
        return (torch.randn(batch, 3, s, s, generator=g),)
    if name == "transformer":
        h, w = latent_sizes[size_index % 2]
        tokens = clip["clip_tokens"] + text["tokens"]
        return (torch.randn(batch, c, h, w, generator=g),
                torch.rand(batch, generator=g) * 1000,
                torch.randn(batch, c, h, w, generator=g),
                torch.randn(batch, tokens, tr["context_width"], generator=g),
                torch.randn(batch, tr["pooled_width"], generator=g))
    if name == "t5":
        return (torch.randint(0, 32, (batch, text["tokens"]), generator=g),)
    raise ValueError(name)


def dynamic_shapes(name, manifest):
    from torch.export import Dim

    lat, tr = manifest["latent"], manifest["transformer"]
    d, p = lat["downscale"], tr["patch_size"]
    batch = Dim("batch", min=1, max=1024)
    if name == "vae_encoder":
        # multiples of the downscale factor (a pass always has multiples of downscale * patch)
        return {"image": {0: batch, 2: d * Dim("h", min=1, max=4096), 3: d * Dim("w", min=1, max=4096)}}
    if name == "vae_decoder":
        return {"latent": {0: batch, 2: Dim("h", min=1, max=4096), 3: Dim("w", min=1, max=4096)}}
    if name in ("clip_local", "clip_global"):
        return {"pixel_values": {0: batch}}
    if name == "transformer":
        hp = Dim("hp", min=1, max=tr["max_patches"])
        wp = Dim("wp", min=1, max=tr["max_patches"])
        spatial = {0: batch, 2: p * hp, 3: p * wp}
        return {"hidden_states": spatial, "timestep": {0: batch}, "lq_latent": spatial,
                "encoder_hidden_states": {0: batch}, "pooled_projections": {0: batch}}
    if name == "t5":
        return {"input_ids": {0: batch}}
    raise ValueError(name)


GRAPH_CLASSES = {"vae_encoder": models.VaeEncoderGraph, "vae_decoder": models.VaeDecoderGraph,
                 "clip_local": models.ClipLocalGraph, "clip_global": models.ClipGlobalGraph,
                 "transformer": models.TransformerGraph, "t5": models.T5Graph}


def io_inputs(name, inputs, io):
    """inputs of graph `name` as it receives them: floating ones in the io dtype, except those its module names in
    `float32_inputs` (the transformer's timestep), which stay float32."""
    cls = GRAPH_CLASSES[name]
    return tuple(x if not x.is_floating_point() else x.float() if n in cls.float32_inputs else x.to(io)
                 for n, x in zip(cls.input_names, inputs))


def prepare(module, name, job):
    """Set the module's compute and io dtypes for export."""
    io, main, vae, _ = compute_dtypes(job["args"]["dtype"], job["args"]["vae_compute"])
    compute = vae if name.startswith("vae") else main
    module.to(compute)
    module.io_dtype = io
    return module.eval()


def _store_bf16(model, log):
    """Store every float32 weight (64 elements or more) of an onnx_ir model as bfloat16 followed by a Cast to
    float32, so the file is half the size and the graph still computes in float32 everywhere."""
    import ml_dtypes
    import onnx_ir as ir

    graph = model.graph
    casts = []
    converted = 0
    for name, value in list(graph.initializers.items()):
        tensor = value.const_value
        if tensor is None or value.dtype != ir.DataType.FLOAT or tensor.size < 64:
            continue
        stored = ir.Value(name=f"{name}__bf16", shape=value.shape, type=ir.TensorType(ir.DataType.BFLOAT16),
                          const_value=ir.Tensor(tensor.numpy().astype(ml_dtypes.bfloat16), name=f"{name}__bf16"))
        graph.initializers.pop(name)
        graph.register_initializer(stored)
        cast = ir.Node("", "Cast", inputs=[stored], attributes=[ir.AttrInt64("to", ir.DataType.FLOAT)],
                       name=f"{name}__to_float", num_outputs=1)
        value.replace_all_uses_with(cast.outputs[0])
        value.name = f"{name}__replaced"
        cast.outputs[0].name = name
        cast.outputs[0].dtype = ir.DataType.FLOAT
        cast.outputs[0].shape = value.shape
        casts.append(cast)
        converted += tensor.size
    if casts:
        graph.insert_before(graph.node(0), casts)
    log(f"  stored {converted:,} weights as bfloat16 (computed in float32)")


def export(name, job, out_dir, log=print):
    """Export graph `name` into out_dir/name.onnx (+ name.onnx.data when over 2 GB)."""
    start = time.perf_counter()
    manifest = job["manifest"]
    loaded = load_module(name, job, log=log)
    # Whose decoder, and where the position embedding came from: for the manifest's provenance.
    files = {"vae_decoder": "vae_decoder.json", "transformer": "pos_embed.json"}
    if name in files:
        (Path(job["work"]) / files[name]).write_text(json.dumps(loaded.provenance))
    module = prepare(loaded, name, job)
    io = module.io_dtype
    inputs = io_inputs(name, example_inputs(name, manifest, batch=2, size_index=1), io)
    kept = "".join(f", {n} float32" for n in module.float32_inputs)
    log(f"  exporting {name} (compute {module.compute_dtype()}, inputs/outputs {io}{kept}) ...")
    with torch.no_grad():
        program = torch.onnx.export(module, inputs, None, input_names=module.input_names,
                                    output_names=module.output_names, dynamic_shapes=dynamic_shapes(name, manifest),
                                    dynamo=True, opset_version=job["args"]["opset"],
                                    verbose=False)
    if compute_dtypes(job["args"]["dtype"], job["args"]["vae_compute"])[3] and not name.startswith("vae"):
        _store_bf16(program.model, log)
    path = Path(out_dir) / f"{name}.onnx"
    for stale in (path, path.with_name(path.name + ".data")):
        stale.unlink(missing_ok=True)
    size = sum(v.const_value.nbytes for v in program.model.graph.initializers.values() if v.const_value is not None)
    # Over 2 GB a protobuf cannot hold the weights: they go to name.onnx.data beside the graph. The threshold can
    # be lowered (DPIR_EXPORT_EXTERNAL_BYTES) to exercise that layout on small models.
    limit = int(os.environ.get("DPIR_EXPORT_EXTERNAL_BYTES", TWO_GB - 64 * 1024 ** 2))
    program.save(str(path), external_data=size >= limit)
    files = [path] + ([path.with_name(path.name + ".data")] if path.with_name(path.name + ".data").exists() else [])
    total = sum(f.stat().st_size for f in files)
    log(f"  wrote {', '.join(f.name for f in files)}: {total / 1024 ** 2:.1f} MiB in {time.perf_counter() - start:.1f} s")
