"""A PyTorch reference of the DPIR restore procedure, written from tools/reference/PROCEDURE.md.

It runs the original PyTorch modules (float32) that the converter exports, not the ONNX graphs, so comparing the
Rust runtime's result on a converted bundle with this one checks the conversion and the runtime together.
The numbers come from the bundle's manifest, as the procedure says. Step numbers refer to PROCEDURE.md.
"""

import math

import numpy as np
import torch
from PIL import Image


# ------------------------------------------------------------------------------------------------ resampler


def _lanczos3(x):
    x = np.abs(x)
    out = np.sinc(x) * np.sinc(x / 3.0)
    return np.where(x < 3.0, out, 0.0)


def _bicubic(x, a=-0.5):
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = a * (x ** 3 - 5.0 * x ** 2 + 8.0 * x - 4.0)
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


KERNELS = {"lanczos": (_lanczos3, 3.0), "bicubic": (_bicubic, 2.0)}


def resample_matrix(n_in, n_out, method):
    """(n_out, n_in) float64 weights of PROCEDURE.md's 1-D resampler (Pillow's convention)."""
    kernel, support0 = KERNELS[method]
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = support0 * filterscale
    weights = np.zeros((n_out, n_in), np.float64)
    for j in range(n_out):
        center = (j + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        k = np.arange(lo, hi)
        w = kernel((k - center + 0.5) / filterscale)
        total = w.sum()
        if total != 0.0:
            w = w / total
        weights[j, lo:hi] = w
    return weights


def resize(img, h, w, method):
    """(H, W, C) float32 -> (h, w, C): horizontal pass, then vertical, in double, rounded to float32 after each."""
    x = img.astype(np.float64)
    x = np.einsum("xk,hkc->hxc", resample_matrix(img.shape[1], w, method), x).astype(np.float32)
    x = np.einsum("yk,kxc->yxc", resample_matrix(img.shape[0], h, method), x.astype(np.float64))
    return x.astype(np.float32)


# ------------------------------------------------------------------------------------------------- pipeline


class Models:
    """The five float32 PyTorch graph modules (see graphs.load_module), called like the bundle's graphs."""

    def __init__(self, modules):
        self.m = modules

    def __call__(self, name, *inputs):
        with torch.no_grad():
            out = self.m[name](*[torch.from_numpy(np.ascontiguousarray(x, np.float32)) for x in inputs])
        if isinstance(out, tuple):
            return tuple(o.float().numpy() for o in out)
        return out.float().numpy()


def _nchw(img):
    return np.ascontiguousarray(img.transpose(2, 0, 1)[None], np.float32)


def _decode(models, man, z, ho, wo):
    lat = man["latent"]
    image = models("vae_decoder", z / np.float32(lat["scaling_factor"]) + np.float32(lat["shift_factor"]))
    x = np.clip((image + 1.0) / 2.0, 0.0, 1.0)
    return np.ascontiguousarray(x[0, :, :ho, :wo].transpose(1, 2, 0))


def _preprocess(img, clip):
    """CLIP's input as the official CLIPImageProcessor makes it from an 8-bit image (PROCEDURE.md step 5)."""
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
    return _nchw(x)


def _starts(n, tile, overlap):
    if n <= tile:
        return [0]
    stride = tile - overlap
    return [min(i * stride, n - tile) for i in range(math.ceil((n - tile) / stride) + 1)]


def _blur(a, r):
    k = np.asarray([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32) / np.float32(16)
    h, w = a.shape[:2]
    out = np.zeros_like(a)
    for dy in (-1, 0, 1):
        ys = np.clip(np.arange(h) + dy * r, 0, h - 1)
        for dx in (-1, 0, 1):
            xs = np.clip(np.arange(w) + dx * r, 0, w - 1)
            out += k[dy + 1, dx + 1] * a[ys][:, xs]
    return out


def _wavelet(a):
    high = np.zeros_like(a)
    for i in range(5):
        b = _blur(a, 2 ** i)
        high += a - b
        a = b
    return high, a


def sigmas(man, steps):
    shift = float(man["scheduler"]["shift"])
    t_train = float(man["scheduler"]["train_timesteps"])

    def f(x):
        return shift * x / (1.0 + (shift - 1.0) * x)

    t = np.linspace(f(1.0) * t_train, f(1.0 / t_train) * t_train, steps, dtype=np.float64) / t_train
    return np.append(f(t), 0.0).astype(np.float32)


def padded_size(man, h0, w0, scale):
    ho, wo = max(1, math.floor(h0 * scale + 0.5)), max(1, math.floor(w0 * scale + 0.5))
    m = man["latent"]["downscale"] * man["transformer"]["patch_size"]
    return ho, wo, math.ceil(ho / m) * m, math.ceil(wo / m) * m


def restore(models, man, lq0, noise, text, scale=1.0, steps=None, guidance=None, clip_input=None,
            color_fix=None):
    """Steps 1-12. text: the (text.tokens, text.width) block (zeros or a precomputed prompt)."""
    steps = steps or man["scheduler"]["steps"]
    guidance = man["defaults"]["guidance"] if guidance is None else guidance
    clip_input = clip_input or man["clip"]["input"]
    color_fix = color_fix or man["defaults"]["color_fix"]
    lat, clip = man["latent"], man["clip"]

    ho, wo, hp, wp = padded_size(man, lq0.shape[0], lq0.shape[1], scale)                # 1, 2
    lq = lq0.astype(np.float32)
    if (ho, wo) != lq.shape[:2]:
        lq = np.clip(resize(lq, ho, wo, "lanczos"), 0.0, 1.0)
    lq_pad = np.pad(lq, ((0, hp - ho), (0, wp - wo), (0, 0)), mode="edge")
    mean, _ = models("vae_encoder", _nchw(2.0 * lq_pad - 1.0))                           # 3
    z_lq = (mean - np.float32(lat["shift_factor"])) * np.float32(lat["scaling_factor"])
    cimg = lq if clip_input == "lq" else _decode(models, man, z_lq, ho, wo)              # 4

    p = _preprocess(cimg, clip)                                                          # 5, 6
    local = models("clip_local", p)[0]
    pooled = np.concatenate([local[0], models("clip_global", p)[0]])
    tokens = []                                                                          # 7
    for y in _starts(cimg.shape[0], clip["global_tile"], clip["global_overlap"]):
        for x in _starts(cimg.shape[1], clip["global_tile"], clip["global_overlap"]):
            tile = cimg[y:y + min(clip["global_tile"], cimg.shape[0]), x:x + min(clip["global_tile"], cimg.shape[1])]
            tp = _preprocess(tile, clip)
            tokens.append(np.concatenate([models("clip_local", tp)[0, 0], models("clip_global", tp)[0]]))

    dp = pooled.shape[0]                                                                 # 8
    rows = np.zeros((local.shape[0] + len(tokens), dp), np.float32)
    rows[:local.shape[0], :local.shape[1]] = local
    rows[local.shape[0]:] = np.stack(tokens)
    n_clip = clip["clip_tokens"]
    context = np.zeros((n_clip + text.shape[0], man["transformer"]["context_width"]), np.float32)
    kept = rows[:n_clip]
    context[:kept.shape[0], :dp] = kept
    context[n_clip:, :text.shape[1]] = text
    context, pooled = context[None], pooled[None]

    sig = sigmas(man, steps)                                                             # 9
    z = noise.astype(np.float32)                                                         # 10
    for i in range(steps):
        t = np.asarray([sig[i] * np.float32(1000.0)], np.float32)
        v = models("transformer", z, t, z_lq, context, pooled)
        if guidance > 1:
            vu = models("transformer", z, t, z_lq, np.zeros_like(context), np.zeros_like(pooled))
            v = vu + np.float32(guidance) * (v - vu)
        z = z + (sig[i + 1] - sig[i]) * v
    x = _decode(models, man, z, ho, wo)                                                  # 11
    if color_fix == "wavelet":                                                           # 12
        x = np.clip(_wavelet(x)[0] + _wavelet(lq)[1], 0.0, 1.0)
    return x.astype(np.float32)


def test_image(h, w, seed=7):
    """A deterministic test picture in [0, 1]: smooth colour gradients, a few edges and some noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([0.5 + 0.4 * np.sin(x / 7.0 + y / 11.0), 0.5 + 0.4 * np.cos(y / 5.0),
                    (x + y) / (h + w)], axis=-1)
    img[h // 3:h // 2, w // 4:3 * w // 4] = [0.9, 0.2, 0.1]
    img += rng.normal(0.0, 0.05, img.shape)
    return np.clip(img, 0.0, 1.0).astype(np.float32)
