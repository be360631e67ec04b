#!/usr/bin/env bash
# Sets up everything dpir needs to build, run and test, inside the project's ignored build/ folder:
# the pinned ONNX Runtime library (from its PyPI wheel, hash-checked), a Python venv for the fixture
# generator and the reference pipeline, and a release build of the crate and CLI. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 tools/fetch_onnxruntime.py

if [ ! -x build/venv/bin/python ] || ! cmp -s tools/requirements.txt build/venv/.requirements; then
    echo "setting up the Python environment in build/venv ..."
    python3 -m venv build/venv
    build/venv/bin/python -m pip install --quiet --disable-pip-version-check -r tools/requirements.txt
    cp tools/requirements.txt build/venv/.requirements
fi

cargo build --release --quiet
