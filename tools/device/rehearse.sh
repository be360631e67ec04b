#!/usr/bin/env bash
# Rehearses the GPU kit on this machine under the device's constraints, so that the kit cannot rot between the
# sessions that get a GPU: a fresh directory holding only what the calls carry (the working tree and one kit folder
# per call, no target/, no build/), the network off (unshare -n), no Rust, the device's Python (3.12) and package
# versions (tools/device/rehearsal-requirements.txt: torch 2.11, transformers 5.17, onnx 1.23.1, ...; no
# diffusers), and the kit's own calls (prepare.sh --rehearsal: CPU provider, tiny models, small sizes).
#
#   bash tools/device/rehearse.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

# The device's Python: 3.12 with its package versions.
venv=build/device-rehearsal-venv
stamp=$venv/.requirements
if ! cmp -s tools/device/rehearsal-requirements.txt "$stamp" 2>/dev/null; then
    # The first Python 3.12 that runs (a pyenv shim may be on the path without one behind it).
    python312=""
    for candidate in python3.12 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12; do
        if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
            python312=$candidate
            break
        fi
    done
    if [ -z "$python312" ]; then
        python312=python3
        echo "note: no Python 3.12 here (the device's); rehearsing with $(python3 --version)"
    fi
    echo "setting up $venv (the device's package versions; a few minutes the first time) ..."
    rm -rf "$venv"
    "$python312" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tools/device/rehearsal-requirements.txt
    cp tools/device/rehearsal-requirements.txt "$stamp"
fi

bash tools/device/prepare.sh --rehearsal >/dev/null
kit=build/rehearsal-kit

fresh=$(mktemp -d)
trap 'rm -rf "$fresh"' EXIT
tree=$fresh/tree
out=$fresh/out
mkdir -p "$tree"
git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$tree"
i=0
while IFS=$'\t' read -r carry command; do
    i=$((i + 1))
    echo "== rehearsal call $i: $command (carry $carry)"
    mkdir -p "$tree/$(dirname "$carry")"
    cp -r "$root/$kit/$i" "$tree/$carry"
    rm -rf "$out" && mkdir -p "$out"
    # The device's environment: its python3 first on the path, no cargo, no network.
    (cd "$tree" && unshare -n env -i HOME="$fresh" OUT="$out" PATH="$root/$venv/bin:/usr/local/bin:/usr/bin:/bin" \
        bash -c "$command")
done <"$kit/calls.tsv"

# Wait for the background conversion started by call 1 to let go of the tree before it is removed.
for _ in $(seq 60); do
    [ -f "$tree/build/device/converted" ] && break
    sleep 1
done
"$venv/bin/python" - "$out/gpu.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
versus = [v["vs_pytorch"]["max_abs"] for k, v in report.items() if k.startswith("rust_") and "vs_pytorch" in v]
assert len(versus) == 2, f"expected a bundle per opset, found {len(versus)}"
assert max(versus) < 0.05, f"Rust fp16 and PyTorch bf16 differ by {max(versus)}"
tiled = report["rust_bundle-fp16-opset23_tiled"]
assert report["rust_bundle-fp16-opset23_preview"]["tiles"] == 1, "the preview restore is one tile"
assert tiled["tiles"] > 1, f"the tiled restore ran in {tiled['tiles']} tile"
check = report["rust_ep_vs_cpu"]["max_abs"]
assert check == 0.0, f"two CPU restores from the same noise differ by {check}"
print(f"rehearsal: {len(versus)} bundles, Rust fp16 vs PyTorch bf16 max abs {max(versus):.2e} (< 0.05), "
      f"tiled restore in {tiled['tiles']} tiles, provider check {check}")
PY
