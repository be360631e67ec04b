#!/usr/bin/env python3
"""Independent DPIR reference pipeline: numpy + onnxruntime (CPU) + Pillow.

It follows tools/reference/PROCEDURE.md literally, one function per numbered step, so that the Rust
pipeline in src/ can be checked against it on the same bundle (see shared/spec/bundle.md).

    python tools/reference/dpir_reference.py --bundle DIR --input IN --output OUT.npy [--noise NOISE.npy]
        [--seed N] [--steps N] [--scale S] [--guidance G] [--prompt NAME|zeros]
        [--clip-input lq|initial_restoration] [--color-fix wavelet|none]
        [--tile-mode joint [--tile-size N] [--tile-overlap N]]

IN is a PNG/TIFF (8 or 16 bit) or a .npy float32 (H, W, 3) array in [0, 1]; OUT.npy is float32 (Ho, Wo, 3).
Defaults for steps, guidance, seed, prompt, clip input and colour fix come from the manifest.

Noise: without --noise the starting noise is numpy.random.default_rng(seed).standard_normal(shape, float32).
That is NOT the Rust runtime's generator, so outputs only match the runtime when the same noise array is
passed explicitly (--noise, or the `noise` argument of restore()); parity tests must do that.

Tiles: --tile-mode joint samples the frame in tiles of --tile-size latent samples (PROCEDURE.md, "Tiles"): the
official tiled sampler's Gaussian blend of the tiles' velocities, one Euler step on the whole latent. Without it
the frame is one pass, whatever its size (the runtime's independent tiles have no reference).

Threads: onnxruntime runs with DPIR_REF_THREADS intra-op threads (default 1).
"""

import argparse
import json
import math
import os
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

GRAPHS = ("vae_encoder", "vae_decoder", "clip_local", "clip_global", "transformer")


# --------------------------------------------------------------------------------------------- bundle


class Bundle:
    """A bundle directory: its manifest and lazily created CPU sessions, one per graph."""

    def __init__(self, path):
        self.dir = Path(path)
        self.manifest = json.loads((self.dir / "dpir.json").read_text())
        self._sessions = {}

    def session(self, graph):
        if graph not in self._sessions:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = int(os.environ.get("DPIR_REF_THREADS", "1"))
            opts.inter_op_num_threads = 1
            self._sessions[graph] = ort.InferenceSession(
                str(self.dir / f"{graph}.onnx"), opts, providers=["CPUExecutionProvider"])
        return self._sessions[graph]

    def run(self, graph, output, **inputs):
        """Run one graph; floating inputs are cast to the graph's declared type, the output to float32."""
        sess = self.session(graph)
        feeds = {}
        for meta in sess.get_inputs():
            feeds[meta.name] = np.ascontiguousarray(inputs[meta.name], dtype=_numpy_type(meta.type))
        (result,) = sess.run([output], feeds)
        return np.asarray(result, dtype=np.float32)


def _numpy_type(onnx_type):
    types = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}
    if onnx_type not in types:
        raise ValueError(f"unsupported graph input type {onnx_type} (bfloat16 graphs cannot be fed from numpy)")
    return types[onnx_type]


def as_bundle(bundle):
    return bundle if isinstance(bundle, Bundle) else Bundle(bundle)


# ------------------------------------------------------------------------------------------ resampler


def resize(img, h, w, method):
    """Resize an (H, W, 3) float image to (h, w) per channel with Pillow in mode "F".

    method: "lanczos" (Lanczos-3) or "bicubic" (a = -0.5). Pillow computes PROCEDURE.md's resampler
    (weights and sums in double, horizontal pass first, rounded to float32 between and after the passes)."""
    flt = {"lanczos": Image.Resampling.LANCZOS, "bicubic": Image.Resampling.BICUBIC}[method]
    out = np.empty((h, w, img.shape[2]), np.float32)
    for c in range(img.shape[2]):
        channel = Image.fromarray(np.ascontiguousarray(img[:, :, c], dtype=np.float32))
        assert channel.mode == "F"
        out[:, :, c] = np.asarray(channel.resize((w, h), flt), dtype=np.float32)
    return out


# -------------------------------------------------------------------------------------- the procedure


def output_size(h0, w0, scale):
    """Step 1 size: max(1, round(H0*s)). round() is taken as half away from zero (floor(x + 0.5)), not
    Python's round-half-to-even; PROCEDURE.md does not say which."""
    return max(1, math.floor(h0 * scale + 0.5)), max(1, math.floor(w0 * scale + 0.5))


def upsample(lq0, scale):
    """Step 1: Lanczos-3 resample to the output size (only when it differs), then clamp to [0, 1]."""
    ho, wo = output_size(lq0.shape[0], lq0.shape[1], scale)
    if (ho, wo) == lq0.shape[:2]:
        return lq0.astype(np.float32)
    return np.clip(resize(lq0, ho, wo, "lanczos"), 0.0, 1.0)


def pad(lq, manifest):
    """Step 2: pad bottom/right by edge replication to multiples of m = downscale * patch_size."""
    m = manifest["latent"]["downscale"] * manifest["transformer"]["patch_size"]
    ho, wo = lq.shape[:2]
    hp, wp = math.ceil(ho / m) * m, math.ceil(wo / m) * m
    return np.pad(lq, ((0, hp - ho), (0, wp - wo), (0, 0)), mode="edge")


def to_nchw(img):
    return np.ascontiguousarray(img.transpose(2, 0, 1)[None], dtype=np.float32)


def encode(bundle, lq_pad):
    """Step 3: z_lq = (mean - shift_factor) * scaling_factor, mean = vae_encoder(2*lq_pad - 1)."""
    lat = bundle.manifest["latent"]
    mean = bundle.run("vae_encoder", "mean", image=to_nchw(2.0 * lq_pad - 1.0))
    return (mean - np.float32(lat["shift_factor"])) * np.float32(lat["scaling_factor"])


def decode(bundle, z, ho, wo):
    """Steps 4 and 11: clamp((vae_decoder(z / scaling + shift) + 1) / 2, 0, 1) cropped to (ho, wo), HWC."""
    lat = bundle.manifest["latent"]
    latent = z / np.float32(lat["scaling_factor"]) + np.float32(lat["shift_factor"])
    image = bundle.run("vae_decoder", "image", latent=latent)
    x = np.clip((image + 1.0) / 2.0, 0.0, 1.0)
    return np.ascontiguousarray(x[0, :, :ho, :wo].transpose(1, 2, 0))


def clip_image(bundle, lq, z_lq, clip_input):
    """Step 4: the image CLIP sees: lq itself, or the initial restoration D(E_dr(lq))."""
    if clip_input == "lq":
        return lq
    if clip_input == "initial_restoration":
        return decode(bundle, z_lq, lq.shape[0], lq.shape[1])
    raise ValueError(f"unknown clip input {clip_input!r}")


def clip_preprocess(img, clip):
    """Step 5, as the official CLIPImageProcessor does it to the 8-bit images it is given: the image in 8 bits
    (floor(x * 255 + 0.5) in float32), short side to S (int() truncation) with Pillow's 8-bit bicubic, centre crop
    S x S, times 1/255 in double then float32, normalised in float32, NCHW."""
    s = clip["image_size"]
    h, w = img.shape[:2]
    if h <= w:
        nh, nw = s, int(s * w / h)
    else:
        nw, nh = s, int(s * h / w)
    eight_bit = np.floor(np.clip(img, 0, 1).astype(np.float32) * np.float32(255) + np.float32(0.5)).astype(np.uint8)
    x = np.asarray(Image.fromarray(eight_bit, "RGB").resize((nw, nh), Image.Resampling.BICUBIC))
    top, left = (nh - s) // 2, (nw - s) // 2
    x = (x[top:top + s, left:left + s].astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.asarray(clip["mean"], np.float32)) / np.asarray(clip["std"], np.float32)
    return to_nchw(x)


def clip_token(bundle, p):
    """concat(clip_local(p).last_hidden_state[0, 0], clip_global(p).image_embeds[0])  (Dp,)."""
    local = bundle.run("clip_local", "last_hidden_state", pixel_values=p)
    glob = bundle.run("clip_global", "image_embeds", pixel_values=p)
    return np.concatenate([local[0, 0], glob[0]])


def local_prompt(bundle, img):
    """Step 6: L = clip_local(P).last_hidden_state[0] (Tl, Dl) and pooled (Dp,) for P = preprocess(img)."""
    p = clip_preprocess(img, bundle.manifest["clip"])
    local = bundle.run("clip_local", "last_hidden_state", pixel_values=p)[0]
    glob = bundle.run("clip_global", "image_embeds", pixel_values=p)[0]
    return local, np.concatenate([local[0], glob])


def tile_starts(n, tile, overlap):
    """Step 7, one axis: [0] if n <= tile, else min(i*stride, n - tile) for k = ceil((n-tile)/stride) + 1."""
    if n <= tile:
        return [0]
    stride = tile - overlap
    k = math.ceil((n - tile) / stride) + 1
    return [min(i * stride, n - tile) for i in range(k)]


def global_tiles(h, w, tile, overlap):
    """Step 7: tiles (y0, x0, th, tw) in row-major order (y outer, x inner), each min(tile, n) long."""
    return [(y, x, min(tile, h), min(tile, w))
            for y in tile_starts(h, tile, overlap) for x in tile_starts(w, tile, overlap)]


def global_prompt(bundle, img):
    """Step 7: one token (Dp,) per global tile of the clip image, stacked (n_tiles, Dp)."""
    clip = bundle.manifest["clip"]
    tokens = []
    for y, x, th, tw in global_tiles(img.shape[0], img.shape[1], clip["global_tile"], clip["global_overlap"]):
        tokens.append(clip_token(bundle, clip_preprocess(img[y:y + th, x:x + tw], clip)))
    return np.stack(tokens)


def text_block(bundle, prompt, prompt_text=None):
    """Step 8: the caption through the bundle's T5 (t5.onnx + tokenizer.json: ids padded with <pad> and cut to
    text.tokens, </s> kept), or the prompt's precomputed T5 block (text.tokens, text.width), or zeros."""
    text = bundle.manifest["text"]
    shape = (text["tokens"], text["width"])
    if prompt_text is not None:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(bundle.dir / "tokenizer.json"))
        tokenizer.enable_truncation(max_length=text["tokens"])
        pad_id = tokenizer.token_to_id("<pad>") or 0
        tokenizer.enable_padding(length=text["tokens"], pad_id=pad_id, pad_token="<pad>")
        ids = np.array([tokenizer.encode(prompt_text).ids], dtype=np.int64)
        return bundle.run("t5", "last_hidden_state", input_ids=ids)[0]
    if prompt == "zeros":
        return np.zeros(shape, np.float32)
    if prompt not in text.get("prompts", {}):
        raise ValueError(f"prompt {prompt!r} is neither 'zeros' nor a key of text.prompts")
    block = np.load(bundle.dir / text["prompts"][prompt]).astype(np.float32)
    if block.shape != shape:
        raise ValueError(f"prompt {prompt!r} has shape {block.shape}, expected {shape}")
    return block


def build_context(manifest, local, global_tokens, text):
    """Step 8: context (1, clip_tokens + text.tokens, context_width) and the clip block inside it."""
    n_clip = manifest["clip"]["clip_tokens"]
    dp = global_tokens.shape[1]  # Dp = Dl + Dg
    rows = np.zeros((local.shape[0] + global_tokens.shape[0], dp), np.float32)
    rows[:local.shape[0], :local.shape[1]] = local
    rows[local.shape[0]:] = global_tokens
    clip_block = np.zeros((n_clip, dp), np.float32)
    kept = rows[:n_clip]
    clip_block[:kept.shape[0]] = kept
    context = np.zeros((n_clip + text.shape[0], manifest["transformer"]["context_width"]), np.float32)
    context[:n_clip, :dp] = clip_block
    context[n_clip:, :text.shape[1]] = text
    return context[None]


def schedule(manifest, steps):
    """Step 9: flow-match Euler sigmas (steps + 1 values, last 0), computed in float64, returned float32."""
    shift = float(manifest["scheduler"]["shift"])
    t_train = float(manifest["scheduler"]["train_timesteps"])

    def f(x):
        return shift * x / (1.0 + (shift - 1.0) * x)

    t = np.linspace(f(1.0) * t_train, f(1.0 / t_train) * t_train, steps, dtype=np.float64) / t_train
    return np.append(f(t), 0.0).astype(np.float32)


def velocity(bundle, z, sigma, z_lq, context, pooled):
    timestep = np.asarray([sigma * np.float32(1000.0)], np.float32)
    return bundle.run("transformer", "velocity", hidden_states=z, timestep=timestep, lq_latent=z_lq,
                      encoder_hidden_states=context, pooled_projections=pooled)


def guided_velocity(bundle, z, sigma, z_lq, context, pooled, guidance):
    """Step 10's v: the conditional velocity, or v_u + g*(v_c - v_u) with all-zero prompts for v_u when g > 1."""
    v = velocity(bundle, z, sigma, z_lq, context, pooled)
    if guidance > 1:
        v_u = velocity(bundle, z, sigma, z_lq, np.zeros_like(context), np.zeros_like(pooled))
        v = v_u + np.float32(guidance) * (v - v_u)
    return v


def sample(bundle, noise, sigmas, z_lq, context, pooled, guidance):
    """Step 10: Euler steps z += (sigma_{i+1} - sigma_i) * v, with classifier-free guidance when g > 1."""
    z = noise.astype(np.float32)
    for i in range(len(sigmas) - 1):
        z = z + (sigmas[i + 1] - sigmas[i]) * guided_velocity(bundle, z, sigmas[i], z_lq, context, pooled, guidance)
    return z


def blur(a, r):
    """Step 12: 3x3 [[1,2,1],[2,4,2],[1,2,1]]/16 kernel dilated by r, indices clamped (replicate)."""
    k = np.asarray([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32) / np.float32(16)
    h, w = a.shape[:2]
    out = np.zeros_like(a)
    for dy in (-1, 0, 1):
        ys = np.clip(np.arange(h) + dy * r, 0, h - 1)
        for dx in (-1, 0, 1):
            xs = np.clip(np.arange(w) + dx * r, 0, w - 1)
            out += k[dy + 1, dx + 1] * a[ys][:, xs]
    return out


def wavelet_decompose(a):
    """Step 12: (high, low) with 5 levels, r = 2**i."""
    high = np.zeros_like(a)
    for i in range(5):
        b = blur(a, 2 ** i)
        high += a - b
        a = b
    return high, a


def color_fix(x, lq, mode):
    """Step 12: "wavelet": clamp(high(x) + low(lq), 0, 1); "none": x unchanged."""
    if mode == "none":
        return x
    if mode != "wavelet":
        raise ValueError(f"unknown colour fix {mode!r}")
    return np.clip(wavelet_decompose(x)[0] + wavelet_decompose(lq)[1], 0.0, 1.0)


def noise_shape(manifest, hp, wp):
    lat = manifest["latent"]
    return (1, lat["channels"], hp // lat["downscale"], wp // lat["downscale"])


# ---------------------------------------------------------------------- tiles (PROCEDURE.md, "Tiles")


def _ceil_div(a, b):
    return -(-a // b)


def axis_tiles(n, tile, overlap, unit):
    """Tiles along a latent axis of n samples, as (start, length): all one length, a multiple of `unit`, the first
    at 0 and the last ending at n, starts evenly spread on the unit grid; one tile [0, n) when n fits a tile."""
    tile = max(tile // unit, 1) * unit
    overlap = min(_ceil_div(overlap, unit) * unit, tile - unit)
    if n <= tile:
        return [(0, n)]
    count = _ceil_div(n - overlap, tile - overlap)
    size = _ceil_div(_ceil_div(n + (count - 1) * overlap, count), unit) * unit  # the shortest that covers n
    free = (n - size) // unit
    return [(unit * (i * free // (count - 1)), size) for i in range(count)]


def tile_options(manifest, tile, overlap):
    """Tile side and overlap in latent samples: the bundle's latent_tile (capped at one pass) and latent_overlap
    unless given; the overlap must be shorter than the tile."""
    patch = manifest["transformer"]["patch_size"]
    most = manifest["transformer"]["max_patches"] * patch
    tile = min(manifest["defaults"]["latent_tile"], most) if tile is None else tile
    overlap = manifest["defaults"]["latent_overlap"] if overlap is None else overlap
    if not patch <= tile <= most or overlap >= tile // patch * patch:
        raise ValueError(f"tile {tile} with overlap {overlap}: the tile must be {patch}..{most}, the overlap smaller")
    return tile, overlap


def tile_grid(manifest, hl, wl, tile, overlap):
    """The sampling tiles (y, x, h, w) of an hl x wl latent, row-major (y outer, x inner)."""
    unit = manifest["transformer"]["patch_size"]
    ys, xs = axis_tiles(hl, tile, overlap, unit), axis_tiles(wl, tile, overlap, unit)
    return [(y, x, h, w) for y, h in ys for x, w in xs]


def gaussian_weights(n, var=0.01):
    """The official tiled sampler's weight along a tile side of n latent samples (`_gaussian_weights`, its x axis;
    PROCEDURE.md says why y is the same): exp(-(x - (n-1)/2)^2 / n^2 / (2 var)) / sqrt(2 pi var), in float64,
    stored float32."""
    x = np.arange(n, dtype=np.float64)
    w = np.exp(-(x - (n - 1) / 2) ** 2 / n ** 2 / (2 * var)) / math.sqrt(2 * math.pi * var)
    return w.astype(np.float32)


def tile_weights(h, w):
    """A tile's weight map (h, w): the outer product of the weights along y and along x."""
    return np.outer(gaussian_weights(h), gaussian_weights(w))


def reconstruct(bundle, lq_pad, y, x, h, w):
    """The initial restoration of one rectangle of the frame on its own: the rectangle grown to the model's
    multiple m (start rounded down, end up; within lq_pad), encoded, decoded, cropped back."""
    man = bundle.manifest
    m = man["latent"]["downscale"] * man["transformer"]["patch_size"]
    y0, x0 = y // m * m, x // m * m
    y1, x1 = math.ceil((y + h) / m) * m, math.ceil((x + w) / m) * m
    z = encode(bundle, lq_pad[y0:y1, x0:x1])
    return decode(bundle, z, y1 - y0, x1 - x0)[y - y0:y - y0 + h, x - x0:x - x0 + w]


def tile_prompts(bundle, lq, lq_pad, z_lq, tiles, clip_input, text):
    """(context, pooled) per tile: its own local prompt of the clip image over its visible pixels, with the
    frame's global tokens and the text block shared by all."""
    man = bundle.manifest
    d = man["latent"]["downscale"]
    ho, wo = lq.shape[:2]
    clip = man["clip"]
    if clip_input == "lq":
        tokens = global_prompt(bundle, lq)
    elif len(tiles) == 1:
        tokens = global_prompt(bundle, clip_image(bundle, lq, z_lq, clip_input))
    else:
        # Several tiles: each global tile is reconstructed on its own (as the runtime does, to keep memory per
        # tile), not cropped from a reconstruction of the whole frame.
        rects = global_tiles(ho, wo, clip["global_tile"], clip["global_overlap"])
        tokens = np.stack([clip_token(bundle, clip_preprocess(reconstruct(bundle, lq_pad, *r), clip)) for r in rects])
    whole = clip_image(bundle, lq, z_lq, clip_input) if clip_input == "lq" or len(tiles) == 1 else None
    prompts = []
    for y, x, h, w in tiles:
        vh, vw = min(h * d, ho - y * d), min(w * d, wo - x * d)  # the tile's pixels inside the frame
        if whole is not None:
            img = whole[y * d:y * d + vh, x * d:x * d + vw]
        else:
            img = decode(bundle, z_lq[:, :, y:y + h, x:x + w], vh, vw)  # the tile's own latent, no margin
        local, pooled = local_prompt(bundle, img)
        prompts.append((build_context(man, local, tokens, text), pooled[None]))
    return prompts


def sample_joint(bundle, noise, sigmas, z_lq, tiles, prompts, guidance):
    """Step 10 in tiles: per step, every tile's guided velocity over its window of z and z_lq, weighted by its
    Gaussian map, summed and divided by the summed weights; then one Euler step on the whole latent."""
    z = noise.astype(np.float32)
    maps = [tile_weights(h, w) for _, _, h, w in tiles]
    for i in range(len(sigmas) - 1):
        v_sum = np.zeros_like(z)
        w_sum = np.zeros(z.shape[2:], np.float32)
        for (y, x, h, w), (context, pooled), g in zip(tiles, prompts, maps):
            win = (slice(None), slice(None), slice(y, y + h), slice(x, x + w))
            v = guided_velocity(bundle, z[win], sigmas[i], z_lq[win], context, pooled, guidance)
            v_sum[win] += g * v
            w_sum[y:y + h, x:x + w] += g
        z = z + (sigmas[i + 1] - sigmas[i]) * (v_sum / w_sum)
    return z


def restore(bundle, image, noise=None, scale=1.0, steps=None, guidance=None, seed=None, prompt=None,
            clip_input=None, color_fix_mode=None, prompt_text=None, tile_mode=None, tile_size=None,
            tile_overlap=None):
    """Steps 1-12 on an (H0, W0, 3) float image in [0, 1]; returns (Ho, Wo, 3) float32 in [0, 1].

    bundle: a directory or a Bundle (reuse one to keep its sessions). Unset options come from the manifest.
    tile_mode "joint": steps 6-10 in tiles of tile_size latent samples (PROCEDURE.md, "Tiles"); None: one pass."""
    bundle = as_bundle(bundle)
    man = bundle.manifest
    steps = man["scheduler"]["steps"] if steps is None else steps
    guidance = man["defaults"]["guidance"] if guidance is None else guidance
    seed = man["defaults"]["seed"] if seed is None else seed
    prompt = man["text"]["default"] if prompt is None else prompt
    clip_input = man["clip"]["input"] if clip_input is None else clip_input
    color_fix_mode = man["defaults"]["color_fix"] if color_fix_mode is None else color_fix_mode

    lq = upsample(np.asarray(image, np.float32), scale)                      # 1
    lq_pad = pad(lq, man)                                                     # 2
    z_lq = encode(bundle, lq_pad)                                             # 3
    text = text_block(bundle, prompt, prompt_text)
    sigmas = schedule(man, steps)                                             # 9
    shape = noise_shape(man, *lq_pad.shape[:2])
    if noise is None:
        noise = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    if tuple(noise.shape) != shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {shape}")
    if tile_mode == "joint":
        tiles = tile_grid(man, shape[2], shape[3], *tile_options(man, tile_size, tile_overlap))
        prompts = tile_prompts(bundle, lq, lq_pad, z_lq, tiles, clip_input, text)           # 4-8 per tile
        z = sample_joint(bundle, noise, sigmas, z_lq, tiles, prompts, guidance)            # 10 in tiles
    elif tile_mode is None:
        cimg = clip_image(bundle, lq, z_lq, clip_input)                      # 4 (5 inside 6, 7)
        local, pooled = local_prompt(bundle, cimg)                            # 6
        tokens = global_prompt(bundle, cimg)                                  # 7
        context = build_context(man, local, tokens, text)                     # 8
        z = sample(bundle, noise, sigmas, z_lq, context, pooled[None], guidance)  # 10
    else:
        raise ValueError(f"unknown tile mode {tile_mode!r} (the reference has 'joint' and one pass)")
    x = decode(bundle, z, lq.shape[0], lq.shape[1])                           # 11
    return color_fix(x, lq, color_fix_mode).astype(np.float32)               # 12


# ---------------------------------------------------------------------------------------------- input


def load_image(path):
    """A PNG/TIFF (8 or 16 bit) or .npy as (H, W, 3) float32 in [0, 1]; alpha dropped, gray replicated."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        arr = np.load(path)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"{path}: expected an (H, W, 3) array, got {arr.shape}")
        return arr.astype(np.float32)
    with open(path, "rb") as fh:
        head = fh.read(26)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[24] == 16:
        return _to_rgb(_read_png16(path).astype(np.float32) / 65535.0)  # Pillow truncates 16-bit colour PNGs
    im = Image.open(path)
    if im.mode.startswith("I;16"):
        return _to_rgb(np.asarray(im).astype(np.float32) / 65535.0)
    bits = getattr(im, "tag_v2", {}).get(258, (8,))
    if im.mode not in ("1", "L", "LA", "P", "PA", "RGB", "RGBA") or max(np.atleast_1d(bits)) > 8:
        raise ValueError(f"{path}: unsupported image mode {im.mode} / bits {bits}; convert it to .npy")
    return np.asarray(im.convert("RGB")).astype(np.float32) / 255.0


def _to_rgb(arr):
    """(H, W) or (H, W, C) -> (H, W, 3): gray replicated, alpha dropped."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(np.repeat(arr[:, :, :1], 3, 2) if arr.shape[2] <= 2 else arr[:, :, :3])


def _read_png16(path):
    """Minimal decoder for non-interlaced 16-bit PNGs (gray, gray+alpha, RGB, RGBA): uint16 (H, W, C)."""
    data, pos, idat = Path(path).read_bytes(), 8, []
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[ctype]
    if interlace:
        raise ValueError(f"{path}: interlaced 16-bit PNG is not supported")
    raw = _unfilter(zlib.decompress(b"".join(idat)), h, w * channels * 2, channels * 2)
    return raw.view(">u2").reshape(h, w, channels)


def _unfilter(raw, h, stride, bpp):
    """Undo PNG row filters (None, Sub, Up, Average, Paeth); returns uint8 (h, stride)."""
    rows = np.frombuffer(raw, np.uint8).reshape(h, stride + 1)
    out = np.zeros((h, stride), np.uint8)
    prev = bytearray(stride)
    for y in range(h):
        ftype, cur = rows[y, 0], bytearray(rows[y, 1:].tobytes())
        for i in range(stride if ftype != 0 else 0):
            a = cur[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                pred = a
            elif ftype == 2:
                pred = b
            elif ftype == 3:
                pred = (a + b) // 2
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            cur[i] = (cur[i] + pred) & 255
        out[y] = np.frombuffer(bytes(cur), np.uint8)
        prev = cur
    return out


# ------------------------------------------------------------------------------------------------ CLI


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--noise", help="float32 .npy of shape (1, C, Hp/d, Wp/d); default: default_rng(seed)")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--guidance", type=float)
    ap.add_argument("--prompt")
    ap.add_argument("--prompt-text", help="caption for the bundle's text encoder (t5.onnx), replacing --prompt")
    ap.add_argument("--clip-input", choices=["lq", "initial_restoration"])
    ap.add_argument("--color-fix", choices=["wavelet", "none"])
    ap.add_argument("--tile-mode", choices=["joint"], help="sample in tiles (default: one pass)")
    ap.add_argument("--tile-size", type=int, help="tile side in latent samples (default: the bundle's)")
    ap.add_argument("--tile-overlap", type=int, help="tile overlap in latent samples (default: the bundle's)")
    args = ap.parse_args(argv)

    image = load_image(args.input)
    noise = np.load(args.noise) if args.noise else None
    start = time.perf_counter()
    out = restore(args.bundle, image, noise=noise, scale=args.scale, steps=args.steps, guidance=args.guidance,
                  seed=args.seed, prompt=args.prompt, clip_input=args.clip_input, color_fix_mode=args.color_fix,
                  prompt_text=args.prompt_text, tile_mode=args.tile_mode, tile_size=args.tile_size,
                  tile_overlap=args.tile_overlap)
    np.save(args.output, out)
    print(f"{image.shape[1]}x{image.shape[0]} -> {out.shape[1]}x{out.shape[0]} "
          f"in {time.perf_counter() - start:.2f} s: {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
