#!/usr/bin/env bash
# Sets up the converter's Python environment in build/export-venv: the packages pinned in
# tools/export/pyproject.toml (torch, diffusers, transformers, onnx, onnxscript, onnxruntime, safetensors, numpy,
# pillow) from PyPI, and tools/export on the venv's path so that `build/export-venv/bin/python -m dpir_export` works
# from anywhere. torch from PyPI pulls about 2.9 GiB of CUDA wheels (about 6 GiB installed): a few minutes the first
# time. Safe to re-run: does nothing when pyproject.toml and the checkout's location have not changed.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=build/export-venv
stamp=$venv/.dpir-export-stamp
want="$(cat tools/export/pyproject.toml; echo "$PWD")"
if [ -x $venv/bin/python ] && [ -f $stamp ] && [ "$(cat $stamp)" = "$want" ]; then
    exit 0
fi
echo "setting up the converter environment in $venv (torch and friends, a few minutes the first time) ..."
python3 -m venv $venv
$venv/bin/python - >"$venv/requirements.txt" <<'PY'
import tomllib
with open("tools/export/pyproject.toml", "rb") as fh:
    print("\n".join(tomllib.load(fh)["project"]["dependencies"]))
PY
$venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$venv/requirements.txt"
site=$($venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$PWD/tools/export" >"$site/dpir_export.pth"
$venv/bin/python -c "import dpir_export, torch, diffusers, transformers, onnx, onnxruntime"
printf '%s' "$want" >$stamp
