#!/usr/bin/env bash
# Sets up everything dpir needs to build, run and test, inside the project's ignored build/ folder:
# the pinned ONNX Runtime library (from its PyPI wheel, hash-checked), a Python venv for the fixture
# generator and the reference pipeline, the C ABI's test tools, and a release build of the crate, CLI and
# libraries. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 tools/fetch_onnxruntime.py

if [ ! -x build/venv/bin/python ] || ! cmp -s tools/requirements.txt build/venv/.requirements; then
    echo "setting up the Python environment in build/venv ..."
    python3 -m venv build/venv
    build/venv/bin/python -m pip install --quiet --disable-pip-version-check -r tools/requirements.txt
    cp tools/requirements.txt build/venv/.requirements
fi

# Tools of the C ABI's checks (tools/test.sh), each installed only when missing: cbindgen (generates
# include/dpir.h), valgrind, gcc's AddressSanitizer runtime, clang with libFuzzer, pkg-config.
if [ "$(cbindgen --version 2>/dev/null)" != "cbindgen 0.29.4" ]; then
    echo "installing cbindgen 0.29.4 ..."
    cargo install cbindgen --version 0.29.4 --locked --quiet
fi
missing=()
for package in valgrind libasan8 clang-14 libclang-rt-14-dev pkg-config; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} ..."
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

cargo build --release --quiet
