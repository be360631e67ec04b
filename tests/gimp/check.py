"""Inputs and checks of the GIMP plug-in test (tests/gimp/test_gimp.sh).

    check.py images DIR            writes DIR/rgb.png and DIR/rgba.png
    check.py screenshot XWD PNG    converts Xvfb's framebuffer file to a PNG
    check.py changed A.png B.png N fails unless at least N pixels differ between two screenshots
    check.py restore|errors|missing|cancel DIR
                                   checks what the script-fu programs of the same names in cases.scm wrote to
                                   DIR/out/, against the inputs and DIR/ref/tiny.png (the CLI's restore of rgb.png
                                   with the tiny bundle and the options cases.scm passes)

Selection rectangles are repeated from cases.scm.
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image

WIDTH, HEIGHT = 400, 300


def write_images(folder: Path) -> None:
    rng = np.random.default_rng(6)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    rgb = np.stack([x * 255 / WIDTH, y * 255 / HEIGHT, 128 + 100 * np.sin(x / 17) * np.cos(y / 23)], -1)
    rgb = np.clip(rgb + rng.normal(0, 12, rgb.shape), 0, 255).round().astype(np.uint8)
    Image.fromarray(rgb).save(folder / "rgb.png")
    # Alpha from 8 to 255 (GIMP's PNG export drops the colour of fully transparent pixels), opaque in a disc.
    alpha = 8 + (x * 247 / (WIDTH - 1))
    alpha[(x - 250) ** 2 + (y - 150) ** 2 < 60**2] = 255
    rgba = np.dstack([rgb[:, ::-1], alpha.round().astype(np.uint8)])
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")


def read(path: Path) -> np.ndarray:
    """Pixels as an (H, W, C) integer array; 16-bit binary PPMs (which Pillow narrows to 8 bits) read here."""
    if path.suffix == ".ppm":
        data = path.read_bytes()
        fields, at = [], 0
        while len(fields) < 4:
            while data[at : at + 1].isspace():
                at += 1
            if data[at : at + 1] == b"#":
                at = data.index(b"\n", at) + 1
                continue
            end = at
            while not data[end : end + 1].isspace():
                end += 1
            fields.append(data[at:end])
            at = end
        magic, width, height, maxval = fields[0], int(fields[1]), int(fields[2]), int(fields[3])
        assert magic == b"P6" and maxval == 65535, f"{path}: expected a 16-bit P6, got {magic} max {maxval}"
        pixels = np.frombuffer(data, ">u2", count=width * height * 3, offset=at + 1)
        return pixels.reshape(height, width, 3).astype(np.int64)
    image = np.asarray(Image.open(path)).astype(np.int64)
    return image[:, :, None] if image.ndim == 2 else image


failures = []


def check(name: str, ok: bool, detail: str) -> None:
    print(f"  {'ok' if ok else 'FAILED'}  {name}: {detail}")
    if not ok:
        failures.append(name)


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a - b).max()) if a.size else 0


def inside(rect):
    x, y, w, h = rect
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[y : y + h, x : x + w] = True
    return mask


def check_region(name: str, result: np.ndarray, expected: np.ndarray, original: np.ndarray, rect) -> None:
    mask = inside(rect)
    check(name, result.shape == original.shape and max_diff(result[mask], expected[mask]) == 0
          and max_diff(result[~mask], original[~mask]) == 0,
          f"inside {rect} max |result - CLI| = {max_diff(result[mask], expected[mask])}, "
          f"outside max |result - input| = {max_diff(result[~mask], original[~mask])}")


def check_restore(folder: Path) -> None:
    out = folder / "out"
    rgb, rgba, tiny = read(folder / "rgb.png"), read(folder / "rgba.png"), read(folder / "ref" / "tiny.png")
    assert max_diff(tiny, rgb) > 0, "the tiny bundle's result should differ from its input"

    whole = read(out / "tiny-whole.png")
    check("whole layer, tiny bundle", whole.shape == tiny.shape and max_diff(whole, tiny) == 0,
          f"max |plug-in - CLI| = {max_diff(whole, tiny)} (the CLI changed the input by up to {max_diff(tiny, rgb)})")
    check_region("rectangle, tiny bundle", read(out / "tiny-rect.png"), tiny, rgb, (150, 90, 170, 120))
    # The layer was at (37, 21): the image's rectangle (100, 80, 150, 100) is the layer's (63, 59, 150, 100).
    check_region("rectangle of a moved layer, tiny bundle", read(out / "tiny-offset.png"), tiny, rgb,
                 (63, 59, 150, 100))

    # Feathered ellipse (120, 60, 200, 180), feather 20: the input far outside, the restore in the middle, a
    # blend of the two between.
    feather = read(out / "tiny-feather.png")
    outside = ~inside((120 - 25, 60 - 25, 200 + 50, 180 + 50))
    middle = inside((220 - 40, 150 - 40, 80, 80))
    low, high = np.minimum(rgb, tiny) - 1, np.maximum(rgb, tiny) + 1
    between = ((feather != rgb) & (feather != tiny)).any(-1)
    check("feathered selection, tiny bundle",
          max_diff(feather[outside], rgb[outside]) == 0 and max_diff(feather[middle], tiny[middle]) == 0
          and bool(((feather >= low) & (feather <= high)).all()) and between.sum() > 1000,
          f"outside max |result - input| = {max_diff(feather[outside], rgb[outside])}, middle max |result - CLI| = "
          f"{max_diff(feather[middle], tiny[middle])}, {int(between.sum())} blended pixels, all between input "
          f"and restore: {bool(((feather >= low) & (feather <= high)).all())}")

    joint = read(out / "oracle-rgba-joint.png")
    check("RGBA rectangle, joint tiles, oracle bundle", joint.shape == rgba.shape and max_diff(joint, rgba) == 0,
          f"max |result - input| = {max_diff(joint, rgba)} (alpha {max_diff(joint[..., 3], rgba[..., 3])})")
    u16 = read(out / "oracle-u16.ppm")
    check("16-bit integer, oracle bundle", max_diff(u16, rgb * 257) == 0,
          f"max |result - input| = {max_diff(u16, rgb * 257)} of 65535")
    for name, label in (("oracle-float-linear.png", "32-bit linear float"),
                        ("oracle-half.png", "16-bit perceptual half float")):
        result = read(out / name)
        check(f"{label}, oracle bundle", max_diff(result, rgb) <= 1,
              f"max |result - input| = {max_diff(result, rgb)} of 255 after GIMP's conversions to and from 8 bits")
    before, after = read(out / "gray-before.png"), read(out / "gray-after.png")
    check("grayscale rectangle, oracle bundle", before.shape[2] == 1 and max_diff(after, before) == 0,
          f"{before.shape[2]} channel, max |result - input| = {max_diff(after, before)}")
    before, after = read(out / "graya-before.png"), read(out / "graya-after.png")
    check("grayscale with alpha, oracle bundle",
          before.shape[2] == 2 and max_diff(after[..., 1], before[..., 1]) == 0
          and max_diff(after[..., 0], before[..., 0]) <= 1,
          f"gray max |result - input| = {max_diff(after[..., 0], before[..., 0])} (through RGBA), alpha "
          f"{max_diff(after[..., 1], before[..., 1])}")


def check_unchanged(folder: Path, names) -> None:
    rgb = read(folder / "rgb.png")
    for name, label in names:
        result = read(folder / "out" / name)
        check(label, result.shape == rgb.shape and max_diff(result, rgb) == 0,
              f"max |saved - input| = {max_diff(result, rgb)}")


def screenshot(framebuffer: Path, png: Path) -> None:
    """Converts Xvfb's screen (an XWD file in its -fbdir, 24-bit colour in 32-bit pixels) to a PNG."""
    data = framebuffer.read_bytes()
    fields = np.frombuffer(data[:100], ">u4")
    header_size, width, height, byte_order, bits_per_pixel, bytes_per_line, colours = (
        int(fields[0]), int(fields[4]), int(fields[5]), int(fields[7]), int(fields[11]), int(fields[12]),
        int(fields[19]))
    assert bits_per_pixel == 32 and byte_order == 0, "expected Xvfb's 32-bit little-endian pixels"
    start = header_size + 12 * colours
    rows = np.frombuffer(data, np.uint8, count=bytes_per_line * height, offset=start).reshape(height, -1)
    pixels = rows[:, : width * 4].reshape(height, width, 4)
    Image.fromarray(np.ascontiguousarray(pixels[..., 2::-1])).save(png)


def main() -> None:
    command, folder = sys.argv[1], Path(sys.argv[2])
    if command == "images":
        write_images(folder)
        return
    if command == "screenshot":
        screenshot(folder, Path(sys.argv[3]))
        return
    if command == "changed":
        before, after = read(folder), read(Path(sys.argv[3]))
        changed = int((np.abs(before - after).max(axis=2) > 8).sum())
        print(f"  {changed} pixels of the screen changed")
        if changed < int(sys.argv[4]):
            raise SystemExit(1)
        return
    if command == "restore":
        check_restore(folder)
    elif command == "errors":
        check_unchanged(folder, [
            ("default-model.png", "model from the default location (oracle), layer restored to itself"),
            ("missing-folder.png", "model folder that does not exist: layer unchanged"),
            ("not-a-bundle.png", "folder that is not a bundle: layer unchanged"),
            ("broken-bundle.png", "bundle whose model outputs NaN: layer unchanged"),
            ("bad-option.png", "guidance out of range: layer unchanged"),
            ("too-large.png", "too large a layer: image unchanged"),
        ])
    elif command == "missing":
        check_unchanged(folder, [("no-model.png", "no model anywhere: layer unchanged"),
                                 ("no-onnxruntime.png", "no ONNX Runtime: layer unchanged")])
    elif command == "cancel":
        check_unchanged(folder, [("cancel.png", "plug-in killed mid-restore: layer unchanged")])
    else:
        raise SystemExit(__doc__)
    if failures:
        raise SystemExit(f"GIMP plug-in checks failed: {', '.join(failures)}")


if __name__ == "__main__":
    main()
