#!/usr/bin/env bash
# Sets up what running dpir needs, inside the project's ignored build/ folder: the pinned ONNX Runtime library
# (from its PyPI wheel, hash-checked) and a release build of the crate, CLI and libraries. Safe to re-run.
# The tests need more: tools/setup-tests.sh (run by tools/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

python3 tools/fetch_onnxruntime.py
cargo build --release --features full --quiet
