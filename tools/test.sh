#!/usr/bin/env bash
# Runs every test: sets up (tools/setup.sh), checks the committed fixtures regenerate byte for byte, runs the
# fixture and reference-pipeline self-checks, then the Rust unit and integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
py=build/venv/bin/python

echo "== fixtures regenerate identically"
fresh=$(mktemp -d)
trap 'rm -rf "$fresh"' EXIT
$py tools/fixtures/make_bundles.py "$fresh" >/dev/null
diff -r "$fresh" tests/fixtures/bundles
$py tools/fixtures/check_bundles.py tests/fixtures/bundles

echo "== reference pipeline self-checks"
$py tools/reference/test_reference.py

echo "== Rust tests"
cargo test --release
