#!/usr/bin/env python3
"""Checks of the reference pipeline: python tools/reference/test_reference.py (plain asserts, no pytest).

Bundle tests use tests/fixtures/bundles/{oracle,tiny} and are skipped (with a message) when absent.
"""

import math
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import dpir_reference as ref  # noqa: E402

BUNDLES = HERE.parent.parent / "tests" / "fixtures" / "bundles"
SIGMAS_28 = [1.0, .987381, .974108, .960129, .945387, .929818, .913349, .8959, .877382, .857692, .836717,
             .814325, .790368, .764677, .737056, .707278, .675082, .64016, .602151, .560625, .515072, .464876,
             .409289, .347393, .278049, .199827, .110906, .008929, 0]


def rand_image(h, w, seed=0):
    return np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)


def bundle(name):
    path = BUNDLES / name
    if not all((path / f).exists() for f in ["dpir.json"] + [g + ".onnx" for g in ref.GRAPHS]):
        print(f"  SKIP: bundle {path} not found")
        return None
    return ref.Bundle(path)


# ---------------------------------------------------------------------------- procedure-only tests


def test_schedule():
    man = {"scheduler": {"shift": 3.0, "train_timesteps": 1000}}
    sig = ref.schedule(man, 28)
    assert sig.dtype == np.float32 and sig.shape == (29,)
    assert np.max(np.abs(sig - np.asarray(SIGMAS_28))) <= 1e-6, sig
    assert ref.schedule(man, 1).tolist() == [1.0, 0.0]


def procedure_resize_1d(line, n_out, kernel, support):
    """PROCEDURE.md's resampler text, written out independently of Pillow (float64)."""
    n_in = len(line)
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = support * filterscale
    out = np.zeros(n_out)
    for j in range(n_out):
        center = (j + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        w = np.array([kernel((k - center + 0.5) / filterscale) for k in range(lo, hi)])
        if w.sum() != 0:
            w = w / w.sum()
        out[j] = np.dot(w, line[lo:hi])
    return out


def sinc(x):
    return 1.0 if x == 0 else math.sin(math.pi * x) / (math.pi * x)


def lanczos3(x):
    return sinc(x) * sinc(x / 3) if abs(x) < 3 else 0.0


def bicubic(x, a=-0.5):
    x = abs(x)
    if x < 1:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    return a * (x ** 3 - 5 * x ** 2 + 8 * x - 4) if x < 2 else 0.0


def procedure_resize(img, h, w, method):
    kernel, support = {"lanczos": (lanczos3, 3), "bicubic": (bicubic, 2)}[method]
    tmp = np.stack([[procedure_resize_1d(img[y, :, c], w, kernel, support) for c in range(3)]
                    for y in range(img.shape[0])]).transpose(0, 2, 1)          # horizontal first
    tmp = tmp.astype(np.float32)                                              # Pillow stores pass 1 as F
    out = np.stack([[procedure_resize_1d(tmp[:, x, c], h, kernel, support) for c in range(3)]
                    for x in range(w)]).transpose(2, 0, 1)
    return out.astype(np.float32)


def test_pillow_is_the_procedure_resampler():
    img = rand_image(13, 17, seed=1) * 3 - 1                                  # values outside [0, 1]: no clamp
    for method in ("lanczos", "bicubic"):
        for h, w in [(26, 34), (5, 7), (13, 40), (31, 6), (13, 17)]:
            got, want = ref.resize(img, h, w, method), procedure_resize(img, h, w, method)
            err = np.max(np.abs(got - want))
            assert err <= 1e-6, (method, h, w, err)  # bit-exact in practice


def test_output_size_and_pad():
    assert ref.output_size(37, 53, 1.0) == (37, 53)
    assert ref.output_size(37, 53, 2.0) == (74, 106)
    assert ref.output_size(35, 3, 1.5) == (53, 5)                            # 52.5 -> 53, 4.5 -> 5
    assert ref.output_size(1, 1, 0.1) == (1, 1)
    man = {"latent": {"downscale": 8}, "transformer": {"patch_size": 2}}
    img = rand_image(37, 53)
    p = ref.pad(img, man)
    assert p.shape == (48, 64, 3)
    assert np.array_equal(p[:37, :53], img) and np.array_equal(p[40, 60], img[36, 52])


def test_wavelet():
    for h, w in [(37, 53), (5, 3), (64, 64)]:
        x = rand_image(h, w, seed=h)
        high, low = ref.wavelet_decompose(x)
        assert np.max(np.abs(high + low - x)) <= 2e-6
    x = rand_image(20, 30, seed=3)
    assert np.max(np.abs(ref.color_fix(x, x, "wavelet") - x)) <= 2e-6
    assert ref.color_fix(x, rand_image(20, 30), "none") is x
    const = np.full((9, 11, 3), 0.25, np.float32)
    assert np.allclose(ref.blur(const, 4), const)


def test_blur_against_explicit_padding():
    a = rand_image(9, 12, seed=5)
    r = 4
    k = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16
    padded = np.pad(a, ((r, r), (r, r), (0, 0)), mode="edge")
    want = sum(k[i, j] * padded[i * r:i * r + 9, j * r:j * r + 12] for i in range(3) for j in range(3))
    assert np.max(np.abs(ref.blur(a, r) - want)) <= 1e-6


def test_global_tiles():
    assert ref.global_tiles(50, 60, 1024, 64) == [(0, 0, 50, 60)]
    assert ref.tile_starts(150, 64, 8) == [0, 56, 86]
    assert ref.global_tiles(150, 64, 64, 8) == [(0, 0, 64, 64), (56, 0, 64, 64), (86, 0, 64, 64)]
    assert ref.tile_starts(120, 64, 8) == [0, 56]
    assert ref.tile_starts(121, 64, 8) == [0, 56, 57]
    tiles = ref.global_tiles(100, 130, 64, 8)
    assert [(y, x) for y, x, _, _ in tiles] == [(0, 0), (0, 56), (0, 66), (36, 0), (36, 56), (36, 66)]


def test_clip_preprocess_shapes():
    clip = {"image_size": 8, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    for h, w in [(20, 30), (30, 20), (5, 5), (3, 100)]:
        p = ref.clip_preprocess(rand_image(h, w), clip)
        assert p.shape == (1, 3, 8, 8) and p.dtype == np.float32


def test_context_layout():
    man = {"clip": {"clip_tokens": 6}, "transformer": {"context_width": 12}}
    local = np.ones((4, 3), np.float32)
    glob = np.full((3, 5), 2, np.float32)
    text = np.full((2, 7), 3, np.float32)
    ctx = ref.build_context(man, local, glob, text)[0]
    assert ctx.shape == (8, 12)
    assert (ctx[:4, :3] == 1).all() and (ctx[:4, 3:] == 0).all()
    assert (ctx[4:6, :5] == 2).all() and (ctx[4:6, 5:] == 0).all()              # third global token cut
    assert (ctx[6:, :7] == 3).all() and (ctx[6:, 7:] == 0).all()


def test_tile_grid():
    assert ref.axis_tiles(40, 16, 4, 2) == [(0, 16), (12, 16), (24, 16)]
    assert ref.axis_tiles(8, 128, 16, 2) == [(0, 8)]
    assert ref.axis_tiles(16, 8, 2, 2) == [(0, 8), (4, 8), (8, 8)]                # balanced: overlap 4, not 2
    assert ref.axis_tiles(12, 7, 1, 2) == [(0, 6), (2, 6), (6, 6)]                 # tile down, overlap up to u
    man = {"transformer": {"patch_size": 2}}
    assert ref.tile_grid(man, 12, 16, 8, 2)[2:4] == [(0, 8, 8, 8), (4, 0, 8, 8)]  # row-major


def test_gaussian_weights():
    for n in (1, 8, 9, 128):
        g = ref.gaussian_weights(n)
        assert g.dtype == np.float32 and g.shape == (n,)
        assert np.array_equal(g, g[::-1]) and g.argmax() == (n - 1) // 2          # centred at (n-1)/2
    assert abs(ref.gaussian_weights(9)[4] / 3.989422804014327 - 1) < 1e-6          # 1/sqrt(2 pi 0.01)
    assert abs(ref.gaussian_weights(10)[0] / 1.5983741106905477e-4 - 1) < 1e-6     # exp(-4.5^2/100/0.02)/...
    w = ref.tile_weights(6, 8)
    assert w.shape == (6, 8) and w[2, 3] == ref.gaussian_weights(6)[2] * ref.gaussian_weights(8)[3]


def test_joint_blend():
    """With a fake model whose velocity is its tile's number, one Euler step from 1 to 0 leaves -V: the
    Gaussian-weighted mean of the covering tiles' numbers."""
    real = ref.guided_velocity
    ref.guided_velocity = lambda b, z, s, z_lq, context, pooled, g: np.full_like(z, context)
    try:
        tiles = [(0, 0, 2, 8), (0, 4, 2, 8)]
        z = ref.sample_joint(None, np.zeros((1, 1, 2, 12), np.float32), np.float32([1, 0]),
                             np.zeros((1, 1, 2, 12), np.float32), tiles, [(1.0, None), (2.0, None)], 1.0)
    finally:
        ref.guided_velocity = real
    g = ref.gaussian_weights(8)
    assert np.allclose(-z[0, 0, 1], [1, 1, 1, 1] + [(g[j + 4] + 2 * g[j]) / (g[j + 4] + g[j]) for j in range(4)]
                       + [2, 2, 2, 2], atol=1e-6)


def png16_bytes(arr, filters=(0, 1, 2, 3, 4)):
    """Encode uint16 (H, W, C) as a 16-bit PNG, cycling through the row filter types."""
    h, w, c = arr.shape
    raw = arr.astype(">u2").view(np.uint8).reshape(h, -1).astype(np.int32)
    bpp = 2 * c
    out, prev = [], np.zeros(raw.shape[1], np.int32)
    for y in range(h):
        ft, cur = filters[y % len(filters)], raw[y]
        a = np.concatenate([np.zeros(bpp, np.int32), cur[:-bpp]])
        c_ = np.concatenate([np.zeros(bpp, np.int32), prev[:-bpp]])
        p = a + prev - c_
        pa, pb, pc = abs(p - a), abs(p - prev), abs(p - c_)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, prev, c_))
        pred = [0, a, prev, (a + prev) // 2, paeth][ft]
        out.append(bytes([ft]) + ((cur - pred) & 255).astype(np.uint8).tobytes())
        prev = cur

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"".join(out))) + chunk(b"IEND", b""))


def test_load_image():
    rng = np.random.default_rng(7)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for c in (1, 2, 3, 4):
            a = rng.integers(0, 65536, (6, 9, c), dtype=np.uint16)
            (tmp / "x.png").write_bytes(png16_bytes(a))
            got = ref.load_image(tmp / "x.png")
            want = a[:, :, [0, 0, 0] if c <= 2 else [0, 1, 2]].astype(np.float32) / 65535
            assert got.shape == (6, 9, 3) and np.array_equal(got, want), c
        a8 = rng.integers(0, 256, (5, 4, 4), dtype=np.uint8)
        Image.fromarray(a8, "RGBA").save(tmp / "y.png")
        assert np.array_equal(ref.load_image(tmp / "y.png"), a8[:, :, :3].astype(np.float32) / 255)
        Image.fromarray(a8[:, :, 0], "L").save(tmp / "g.tif")
        assert np.array_equal(ref.load_image(tmp / "g.tif"), a8[:, :, [0, 0, 0]].astype(np.float32) / 255)
        g16 = rng.integers(0, 65536, (5, 4), dtype=np.uint16)
        Image.fromarray(g16).save(tmp / "g16.tif")
        assert np.array_equal(ref.load_image(tmp / "g16.tif"), np.repeat(g16[:, :, None], 3, 2) / np.float32(65535))


# ------------------------------------------------------------------------------------- bundle tests


def oracle_noise(b, h, w, scale, seed):
    ho, wo = ref.output_size(h, w, scale)
    m = b.manifest["latent"]["downscale"] * b.manifest["transformer"]["patch_size"]
    shape = ref.noise_shape(b.manifest, math.ceil(ho / m) * m, math.ceil(wo / m) * m)
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def test_oracle_identity():
    b = bundle("oracle")
    if b is None:
        return
    img = rand_image(37, 53, seed=11)
    for steps in (1, 4, 28):
        for guidance in (1.0, 3.0):
            out = ref.restore(b, img, noise=oracle_noise(b, 37, 53, 1.0, steps), steps=steps, guidance=guidance)
            err = np.max(np.abs(out - img))
            assert out.shape == img.shape and out.dtype == np.float32
            assert err <= 1e-5, (steps, guidance, err)
    for h, w in [(1, 1), (16, 16), (5, 70)]:
        x = rand_image(h, w, seed=h)
        assert np.max(np.abs(ref.restore(b, x, steps=2) - x)) <= 1e-5, (h, w)
    x = rand_image(150, 70, seed=2)                                            # 3 global tiles, prompt block
    assert np.max(np.abs(ref.restore(b, x, steps=3, guidance=2.0, prompt="quality") - x)) <= 1e-5
    for clip_input in ("lq", "initial_restoration"):
        for fix in ("wavelet", "none"):
            out = ref.restore(b, img, steps=2, clip_input=clip_input, color_fix_mode=fix)
            assert np.max(np.abs(out - img)) <= 1e-5, (clip_input, fix)


def test_oracle_scale2():
    b = bundle("oracle")
    if b is None:
        return
    img = rand_image(37, 53, seed=12)
    want = np.clip(procedure_resize(img, 74, 106, "lanczos"), 0, 1)
    for guidance in (1.0, 3.0):
        out = ref.restore(b, img, scale=2.0, steps=4, guidance=guidance)
        assert out.shape == (74, 106, 3)
        assert np.max(np.abs(out - want)) <= 1e-5, np.max(np.abs(out - want))


def test_tiny():
    b = bundle("tiny")
    if b is None:
        return
    img = rand_image(48, 80, seed=13)  # a multiple of 16 (no padding), odd 3x5 patch grid
    noise = oracle_noise(b, 48, 80, 1.0, 99)
    out = ref.restore(b, img, noise=noise, steps=4)
    assert out.shape == (48, 80, 3) and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    again = ref.restore(b, img, noise=noise.copy(), steps=4)
    assert np.array_equal(out, again)
    other = ref.restore(b, img, noise=-noise, steps=4)
    print(f"  tiny: mean |out - in| = {np.mean(np.abs(out - img)):.4f}, other noise changes it by "
          f"{np.max(np.abs(other - out)):.4f}")
    for kwargs in ({"guidance": 2.5}, {"clip_input": "initial_restoration"}, {"color_fix_mode": "none"}):
        x = ref.restore(b, img, noise=noise, steps=2, **kwargs)
        assert x.shape == (48, 80, 3) and np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1, kwargs
    x = ref.restore(b, img, steps=2, scale=1.5)
    assert x.shape == (72, 120, 3) and np.isfinite(x).all()
    x = ref.restore(b, rand_image(100, 130), steps=2, guidance=2.0, prompt="quality")  # 6 global tiles
    assert x.shape == (100, 130, 3) and np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1


def test_joint_tiles():
    b = bundle("tiny")
    if b is None:
        return
    img = rand_image(40, 56, seed=15)                                          # padded 48x64: a 6x8 latent
    noise = oracle_noise(b, 40, 56, 1.0, 15)
    for kwargs in ({}, {"guidance": 2.0, "clip_input": "initial_restoration"}):
        one = ref.restore(b, img, noise=noise, steps=2, **kwargs)
        joint = ref.restore(b, img, noise=noise, steps=2, tile_mode="joint", tile_size=8, tile_overlap=2, **kwargs)
        assert np.max(np.abs(joint - one)) <= 1e-6, kwargs                     # one tile is one pass
        tiled = ref.restore(b, img, noise=noise, steps=2, tile_mode="joint", tile_size=4, tile_overlap=2, **kwargs)
        assert np.isfinite(tiled).all() and np.max(np.abs(tiled - one)) > 1e-3, kwargs  # 2x3 tiles


def test_cli():
    b = bundle("tiny")
    if b is None:
        return
    img = rand_image(24, 20, seed=14)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        Image.fromarray((img * 255).round().astype(np.uint8)).save(tmp / "in.png")
        np.save(tmp / "noise.npy", oracle_noise(b, 24, 20, 1.0, 5))
        cmd = [sys.executable, str(HERE / "dpir_reference.py"), "--bundle", str(b.dir), "--input",
               str(tmp / "in.png"), "--output", str(tmp / "out.npy"), "--noise", str(tmp / "noise.npy"),
               "--steps", "3", "--guidance", "2", "--prompt", "zeros", "--color-fix", "none"]
        subprocess.run(cmd, check=True)
        out = np.load(tmp / "out.npy")
        want = ref.restore(b, ref.load_image(tmp / "in.png"), noise=np.load(tmp / "noise.npy"), steps=3,
                           guidance=2, prompt="zeros", color_fix_mode="none")
        assert out.dtype == np.float32 and np.array_equal(out, want)


def main():
    tests = [(name, fn) for name, fn in globals().items() if name.startswith("test_") and callable(fn)]
    for name, fn in tests:
        start = time.perf_counter()
        fn()
        print(f"ok {name} ({time.perf_counter() - start:.1f} s)")
    print(f"all {len(tests)} tests passed")


if __name__ == "__main__":
    main()
