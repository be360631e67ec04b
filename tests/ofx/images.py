"""Images for the OpenFX real-host test (tests/ofx/melt.sh): makes the inputs and checks what melt wrote.

    images.py inputs IN.png DIR                      DIR/a.png (IN as RGB), b.png (mirrored), c.png (flipped),
                                                     a16.png (16-bit RGB with varying low bits) and a16.rgb48
                                                     (its raw samples)
    images.py same ACTUAL EXPECTED [--levels N]      ACTUAL equals EXPECTED within N levels (default 2)
    images.py differs ACTUAL OTHER [--levels N]      the mean difference is at least N levels (default 4)
    images.py black ACTUAL                           every sample is 0 (a failed render, where the input is not)

Images are PNG files (compared as 8-bit RGB) or raw `.rgb48` files of 16-bit little-endian RGB, whose size comes
from `--size WxH` and whose levels are 16-bit levels. Prints one line; exits 1 when the check fails.
"""

import argparse
import os
import struct
import sys
import zlib

import numpy as np
from PIL import Image


def load(path, size):
    if path.endswith(".rgb48"):
        if not size:
            sys.exit(f"{path}: raw images need --size WxH")
        width, height = (int(v) for v in size.split("x"))
        data = np.fromfile(path, dtype="<u2")
        if data.size != width * height * 3:
            sys.exit(f"{path}: {data.size} samples, not {width}x{height} RGB")
        return data.reshape(height, width, 3).astype(np.int64)
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int64)


def write_png16(path, rgb):
    """A 16-bit RGB PNG (Pillow writes 16 bits only for gray)."""
    height, width, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)))
        f.write(chunk(b"IEND", b""))


def make_inputs(source, folder):
    image = Image.open(source).convert("RGB")
    image.save(f"{folder}/a.png")
    image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(f"{folder}/b.png")
    image.transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(f"{folder}/c.png")
    wide = np.asarray(image).astype(np.uint16) * 257
    wide = wide + (np.arange(wide.size, dtype=np.uint16).reshape(wide.shape) % 251)
    write_png16(f"{folder}/a16.png", wide)
    wide.astype("<u2").tofile(f"{folder}/a16.rgb48")
    print(f"inputs {image.width}x{image.height} in {folder}")
    return 0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("check", choices=["inputs", "same", "differs", "black"])
    parser.add_argument("actual")
    parser.add_argument("other", nargs="?")
    parser.add_argument("--levels", type=float)
    parser.add_argument("--size")
    args = parser.parse_args()
    if args.check == "inputs":
        return make_inputs(args.actual, args.other)
    actual = load(args.actual, args.size)
    name = os.path.basename(args.actual)
    if args.check == "black":
        ok = not actual.any()
        print(f"{name}: all black" if ok else f"{name}: {np.count_nonzero(actual)} nonzero samples")
        return 0 if ok else 1
    other = load(args.other, args.size)
    other_name = os.path.basename(args.other)
    if actual.shape != other.shape:
        print(f"{name} is {actual.shape}, {other_name} is {other.shape}")
        return 1
    difference = np.abs(actual - other)
    if args.check == "same":
        limit = 2 if args.levels is None else args.levels
        ok = difference.max() <= limit
        print(f"{name} vs {other_name}: max difference {difference.max()} levels (limit {limit:g})")
    else:
        limit = 4 if args.levels is None else args.levels
        ok = difference.mean() >= limit
        print(f"{name} vs {other_name}: mean difference {difference.mean():.1f} levels (at least {limit:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
