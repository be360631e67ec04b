#!/usr/bin/env bash
# Installs what the tests need beyond tools/setup.sh, each piece only when missing: a Python venv for the fixture
# generator and the reference pipeline (build/venv), cbindgen (generates include/dpir.h), valgrind, gcc's
# AddressSanitizer runtime, clang with libFuzzer, pkg-config, and Wine and LLVM's linker for the Windows build. The
# plug-in tests build their Debian chroot (tools/hosts/chroot.sh), the converter test its PyTorch venv
# (tools/export/setup.sh) and the Windows build its cross toolchain (tools/windows/build.sh) themselves.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x build/venv/bin/python ] || ! cmp -s tools/requirements.txt build/venv/.requirements; then
    echo "setting up the Python environment in build/venv ..."
    python3 -m venv build/venv
    build/venv/bin/python -m pip install --quiet --disable-pip-version-check -r tools/requirements.txt
    cp tools/requirements.txt build/venv/.requirements
fi

if [ "$(cbindgen --version 2>/dev/null)" != "cbindgen 0.29.4" ]; then
    echo "installing cbindgen 0.29.4 ..."
    cargo install cbindgen --version 0.29.4 --locked --quiet
fi
bash tools/debian-packages.sh valgrind libasan8 clang-14 libclang-rt-14-dev pkg-config wine wine64 lld-14
