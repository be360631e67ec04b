#!/usr/bin/env python3
"""Fetch the pinned ONNX Runtime C library from its PyPI wheel, check it, and unpack it.

The wheel is downloaded with pip (the only network this project relies on), its sha256 is
checked against the pin below, and only `onnxruntime/capi/lib*.so*` is extracted into
`build/onnxruntime/lib/`, with the `libonnxruntime.so.1` and `libonnxruntime.so` links that
the runtime looks for. A truncated library crashes the dynamic loader, so nothing is
extracted from a wheel whose hash does not match.
"""
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

VERSION = "1.31.1"
WHEEL = f"onnxruntime-{VERSION}-cp311-cp311-manylinux_2_28_x86_64.whl"
SHA256 = "5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f"

ROOT = Path(__file__).resolve().parent.parent
DEST = Path(os.environ.get("DPIR_BUILD_DIR", ROOT / "build")) / "onnxruntime" / "lib"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main() -> int:
    library = DEST / f"libonnxruntime.so.{VERSION}"
    marker = DEST / ".complete"
    if library.exists() and marker.exists() and marker.read_text().strip() == SHA256:
        print(f"ONNX Runtime {VERSION} already in {DEST}")
        return 0
    cache = DEST.parent / "wheel"
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / WHEEL
    if not wheel.exists() or sha256(wheel) != SHA256:
        print(f"downloading {WHEEL} from PyPI ...", flush=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
             "--platform", "manylinux_2_28_x86_64", "--dest", str(cache), f"onnxruntime=={VERSION}"],
            check=True,
        )
    found = sha256(wheel)
    if found != SHA256:
        print(f"error: {wheel} has sha256 {found}, expected {SHA256}; refusing to unpack it", file=sys.stderr)
        return 1
    DEST.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive, tempfile.TemporaryDirectory(dir=DEST) as scratch:
        for member in archive.namelist():
            name = member.rsplit("/", 1)[-1]
            if member.startswith("onnxruntime/capi/lib") and ".so" in name:
                # Extract beside the destination, then rename: a reader never sees half a library.
                staged = Path(archive.extract(member, scratch))
                os.replace(staged, DEST / name)
    for link in ("libonnxruntime.so.1", "libonnxruntime.so"):
        target = DEST / link
        if target.is_symlink() or target.exists():
            target.unlink()
        target.symlink_to(library.name)
    marker.write_text(SHA256 + "\n")
    print(f"ONNX Runtime {VERSION} unpacked into {DEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
