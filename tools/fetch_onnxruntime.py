#!/usr/bin/env python3
"""Fetch the pinned ONNX Runtime C library from its PyPI wheel, check it, and unpack it.

    python3 tools/fetch_onnxruntime.py [--gpu] [--windows] [--wheel FILE]

The wheel is downloaded with pip (the only network this project relies on), or taken from
--wheel on a machine without network; its sha256 is checked against the pin below, and only
`onnxruntime/capi/lib*.so*` is extracted into `build/onnxruntime/lib/`, with the
`libonnxruntime.so.1` and `libonnxruntime.so` links that the runtime looks for. A truncated
library crashes the dynamic loader, so nothing is extracted from a wheel whose hash does not
match. --gpu takes the `onnxruntime-gpu` wheel instead (the same library plus the CUDA and
TensorRT providers, for CUDA 13 and cuDNN 9) into `build/onnxruntime-gpu/lib/`.

--windows takes the Windows (win_amd64) wheel: `onnxruntime/capi/*.dll`, ONNX Runtime's LICENSE
and ThirdPartyNotices.txt into `build/onnxruntime-windows/bin/` (with --gpu,
`build/onnxruntime-gpu-windows/bin/`), for tools/windows/build.sh.
"""
import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

VERSION = "1.31.1"
# (package, platform) -> (wheel, its Python version, sha256); the C libraries inside do not depend on the Python
# version.
WHEELS = {
    ("onnxruntime", "linux"): (f"onnxruntime-{VERSION}-cp311-cp311-manylinux_2_28_x86_64.whl", "3.11",
                               "5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f"),
    ("onnxruntime-gpu", "linux"): (f"onnxruntime_gpu-{VERSION}-cp312-cp312-manylinux_2_28_x86_64.whl", "3.12",
                                   "05d548956197b9d01f59b625de740e0d6be3593f874e241a12dc0362650ecdf7"),
    ("onnxruntime", "windows"): (f"onnxruntime-{VERSION}-cp311-cp311-win_amd64.whl", "3.11",
                                 "c3d91b5de31e2fc82d71bd65b2b22bddee8b49057a3a36338e9a868e0ea90c05"),
    ("onnxruntime-gpu", "windows"): (f"onnxruntime_gpu-{VERSION}-cp311-cp311-win_amd64.whl", "3.11",
                                     "fd98341ba71c093153f0dcfc53eb69d57f706866fb45e94e5b0cde5d97a50dbf"),
}
# pip's name for each platform's wheels.
PIP_PLATFORM = {"linux": "manylinux_2_28_x86_64", "windows": "win_amd64"}

ROOT = Path(__file__).resolve().parent.parent
BUILD = Path(os.environ.get("DPIR_BUILD_DIR", ROOT / "build"))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def wanted(member: str, windows: bool) -> bool:
    """Whether a wheel member is unpacked: the libraries, and on Windows the licence texts that ship with them."""
    name = member.rsplit("/", 1)[-1]
    if windows:
        return (member.startswith("onnxruntime/capi/") and name.endswith(".dll")) or member in (
            "onnxruntime/LICENSE", "onnxruntime/ThirdPartyNotices.txt")
    return member.startswith("onnxruntime/capi/lib") and ".so" in name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="the onnxruntime-gpu wheel (CUDA and TensorRT providers)")
    parser.add_argument("--windows", action="store_true", help="the Windows wheel's DLLs (for tools/windows)")
    parser.add_argument("--wheel", type=Path, help="use this wheel file instead of downloading it")
    args = parser.parse_args()
    package = "onnxruntime-gpu" if args.gpu else "onnxruntime"
    platform = "windows" if args.windows else "linux"
    wheel_name, python, pin = WHEELS[package, platform]
    if args.windows:
        dest = BUILD / f"{package}-windows" / "bin"
        library = dest / "onnxruntime.dll"
    else:
        dest = BUILD / package / "lib"
        library = dest / f"libonnxruntime.so.{VERSION}"
    marker = dest / ".complete"
    if library.exists() and marker.exists() and marker.read_text().strip() == pin:
        print(f"{package} {VERSION} ({platform}) already in {dest}")
        return 0
    cache = dest.parent / "wheel"
    cache.mkdir(parents=True, exist_ok=True)
    wheel = args.wheel or cache / wheel_name
    if not args.wheel and (not wheel.exists() or sha256(wheel) != pin):
        print(f"downloading {wheel_name} from PyPI ...", flush=True)
        abi = "cp" + python.replace(".", "")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             "--python-version", python, "--implementation", "cp", "--abi", abi,
             "--platform", PIP_PLATFORM[platform], "--dest", str(cache), f"{package}=={VERSION}"],
            check=True,
        )
    found = sha256(wheel)
    if found != pin:
        print(f"error: {wheel} has sha256 {found}, expected {pin}; refusing to unpack it", file=sys.stderr)
        return 1
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive, tempfile.TemporaryDirectory(dir=dest) as scratch:
        for member in archive.namelist():
            if wanted(member, args.windows):
                # Extract beside the destination, then rename: a reader never sees half a library.
                staged = Path(archive.extract(member, scratch))
                os.replace(staged, dest / member.rsplit("/", 1)[-1])
    if not args.windows:
        for link in ("libonnxruntime.so.1", "libonnxruntime.so"):
            target = dest / link
            if target.is_symlink() or target.exists():
                target.unlink()
            target.symlink_to(library.name)
    marker.write_text(pin + "\n")
    print(f"{package} {VERSION} ({platform}) unpacked into {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
