#!/usr/bin/env bash
# Runs every test (what CI runs through .ci/run): sets up (tools/setup.sh, tools/setup-tests.sh), checks the
# committed fixtures regenerate byte for byte, runs the fixture and reference-pipeline self-checks, the Rust unit
# and integration tests, the Python package, the C ABI (header, installed libraries, C and C++ tests, valgrind,
# AddressSanitizer, libFuzzer), the GIMP and OpenFX plug-ins in real hosts (a Debian forky chroot; needs root),
# the Windows build under Wine, and the converter on tiny models of the real PyTorch classes, and rehearses the GPU
# kit (tools/device) offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
bash tools/setup-tests.sh
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
cargo test --release --features full

# The Python package (bindings/python): its abi3 wheel, installed into build/venv, whose onnxruntime package
# supplies the ONNX Runtime library as it would for a Python user; dpir.ray on a local Ray cluster (about 20 s).
echo "== Python package: build the wheel (maturin), install it, pytest (bindings/python/tests, with Ray)"
rm -rf build/wheels
(cd bindings/python && ../../build/venv/bin/maturin build --release --quiet -i ../../$py -o ../../build/wheels)
$py -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps build/wheels/dpir-*.whl
$py -m pytest -q -p no:cacheprovider bindings/python/tests

# The C ABI: the header, the installed libraries, and C and C++ programs built against them.
capi=build/c-api
strict="-Wall -Wextra -Werror -pedantic"
cabi_scratch=$(mktemp -d)
trap 'rm -rf "$fresh" "$cabi_scratch"' EXIT
mkdir -p "$cabi_scratch/corrupt_graph"
cp -r tests/fixtures/bundles/oracle/. "$cabi_scratch/corrupt_graph/"
echo "not a graph" >"$cabi_scratch/corrupt_graph/transformer.onnx"

echo "== C ABI: include/dpir.h equals a fresh cbindgen run over src/ffi"
cbindgen --quiet --config cbindgen.toml --output "$fresh/dpir.h" src/ffi/mod.rs
diff -u include/dpir.h "$fresh/dpir.h"

echo "== C ABI: install under $capi/install; SONAME, exported symbols, pkg-config"
rm -rf "$capi" && mkdir -p "$capi/bin"
bash tools/install.sh --prefix "$capi/install" --with-onnxruntime
export PKG_CONFIG_PATH=$PWD/$capi/install/lib/pkgconfig
abi=$(sed -n 's/^#define DPIR_ABI_VERSION \([0-9]*\)$/\1/p' include/dpir.h)
readelf -d "$capi/install/lib/libdpir.so" | grep -q "Library soname: \[libdpir.so.$abi\]"
diff <(nm -D --defined-only "$capi/install/lib/libdpir.so" | awk '{print $3}' | sort) \
    <(sed -n 's/^[a-z].*[ *]\(dpir_[a-z_]*\)(.*/\1/p' include/dpir.h | sort)
echo "libdpir.so.$abi exports exactly the $(grep -c '^[a-z].*[ *]dpir_[a-z_]*(' include/dpir.h) functions of dpir.h"

echo "== C ABI: build the examples and tests with pkg-config (C99 and C++17, $strict)"
cc -std=c99 $strict -O1 -g examples/restore.c -o "$capi/bin/restore" $(pkg-config --cflags --libs dpir)
c++ -std=c++17 $strict -O1 -g examples/restore.cpp -o "$capi/bin/restore_cpp" $(pkg-config --cflags --libs dpir)
cc -std=c99 $strict -O1 -g tests/c/test_capi.c -o "$capi/bin/test_capi" $(pkg-config --cflags --libs dpir) -pthread -lm
c++ -std=c++17 $strict -O1 -g tests/c/test_cpp.cpp -o "$capi/bin/test_cpp" $(pkg-config --cflags --libs dpir)
export LD_LIBRARY_PATH=$PWD/$capi/install/lib

echo "== C ABI: C test program (every function, status and bad descriptor; 4 threads; cancel from a thread)"
"$capi/bin/test_capi" tests/fixtures/bundles "$cabi_scratch"

echo "== C ABI: C++ wrapper test, also under UndefinedBehaviorSanitizer (signed overflow in row sizes, ...)"
"$capi/bin/test_cpp" tests/fixtures/bundles "$cabi_scratch"
c++ -std=c++17 $strict -O1 -g -fsanitize=undefined -fno-sanitize-recover=all tests/c/test_cpp.cpp \
    -o "$capi/bin/test_cpp_ubsan" $(pkg-config --cflags --libs dpir)
"$capi/bin/test_cpp_ubsan" tests/fixtures/bundles "$cabi_scratch" | tail -n 1

echo "== C ABI: the C and C++ examples restore a PNG with the oracle bundle, identically"
oracle=tests/fixtures/bundles/oracle
picture=examples/images/landscape.png
"$capi/bin/restore" $oracle $picture "$cabi_scratch/c.png" 2 2>/dev/null
"$capi/bin/restore_cpp" $oracle $picture "$cabi_scratch/cpp.png" 2 2>/dev/null
cmp "$cabi_scratch/c.png" "$cabi_scratch/cpp.png"

echo "== C ABI: the examples in README.md and at the top of dpir.h build and restore the same PNG"
awk '/^A complete program/ {f = 1} f && /^```c$/ {p = 1; next} p && /^```$/ {exit} p' README.md \
    >"$cabi_scratch/readme.c"
sed -n '/^ \* @code$/,/^ \* @endcode$/p' include/dpir.h | sed '1d;$d' | sed 's/^ \* \{0,1\}//' >"$cabi_scratch/header.c"
cmp "$cabi_scratch/readme.c" "$cabi_scratch/header.c"
cc -std=c99 $strict "$cabi_scratch/readme.c" -o "$capi/bin/readme_example" $(pkg-config --cflags --libs dpir)
"$capi/bin/readme_example" $oracle $picture "$cabi_scratch/readme.png"
cmp "$cabi_scratch/c.png" "$cabi_scratch/readme.png"

echo "== C ABI: the C example under valgrind memcheck (no errors, no definite leaks)"
vglog=$cabi_scratch/valgrind.log
if ! valgrind --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite \
    --suppressions=tests/c/valgrind.supp --log-file="$vglog" \
    "$capi/bin/restore" $oracle $picture "$cabi_scratch/vg.png" 2 \
    >/dev/null 2>&1; then
    cat "$vglog"
    exit 1
fi
grep -E "ERROR SUMMARY|(definitely|indirectly|possibly) lost:" "$vglog" | sed 's/^==[0-9]*== *//'

echo "== C ABI: AddressSanitizer build of the C test, linked with the static libdpir.a"
cc -std=c99 $strict -O1 -g -fsanitize=address -fno-omit-frame-pointer tests/c/test_capi.c \
    -o "$capi/bin/test_capi_asan" $(pkg-config --cflags --libs dpir-static) -pthread -lm
# Linked statically and run from build/c-api/bin: no ONNX Runtime beside it, so it is named.
DPIR_ORT_LIB=$PWD/$capi/install/lib/libonnxruntime.so ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
    "$capi/bin/test_capi_asan" tests/fixtures/bundles "$cabi_scratch"

# The fuzzers link libdpir.a built with coverage instrumentation, so they are guided through dpir's own code and
# the decoders it calls (fuzz/run.sh; the instrumented build takes a few minutes the first time).
echo "== C ABI: libFuzzer over descriptor, options and region validation (30 s, committed corpus)"
bash fuzz/run.sh validation 30

echo "== C ABI: libFuzzer over the file readers (PNG, JPEG, TIFF, .npy, the bundle manifest; 20 s, committed corpus)"
bash fuzz/run.sh files 20

# The GIMP 3 plug-in in a real GIMP (about a minute once tools/hosts/chroot.sh has built the chroot).
echo "== GIMP plug-in: built and run in gimp-console-3 in a Debian forky chroot (tests/gimp/test_gimp.sh)"
bash tests/gimp/test_gimp.sh

# The OpenFX plug-in: a project-written conformance host (tiles against the full frame, regions of interest served
# exactly, every pixel format, failures, abort; also under AddressSanitizer), then MLT's melt 7.42 in the Debian
# forky chroot (about 30 s once tools/hosts/chroot.sh has built the chroot).
echo "== OpenFX plug-in: conformance host and melt in a Debian forky chroot (tests/ofx/test_ofx.sh)"
bash tests/ofx/test_ofx.sh

# The Windows build (tools/windows/build.sh, cross-compiled with MinGW) under Wine 8: the CLI, the C library and
# the OpenFX plug-in from the zip a user unpacks (about 5 minutes the first time, a minute after).
echo "== Windows: CLI, C library and OpenFX plug-in under Wine (tests/windows/test_windows.sh)"
bash tests/windows/test_windows.sh

# The converter (tools/export, issue 5): tiny randomly initialised models of the real classes (diffusers'
# SD3Transformer2DModel + our LQ branch, AutoencoderKL, transformers' CLIPModel and T5EncoderModel) saved in the
# real release's layouts, converted with the real command. The converter itself checks every graph on ONNX Runtime
# against PyTorch and restores through target/release/dpir against its PyTorch reference pipeline from the same
# noise (fp32: <= 1e-3 on [0,1] pixels). torch lives in its own venv (build/export-venv, about 6 GiB, a few minutes
# the first time); the Rust tests above do not need it. About 4 minutes on a 2-core machine once installed.
echo "== converter: set up build/export-venv (tools/export/setup.sh)"
bash tools/export/setup.sh
xpy=build/export-venv/bin/python
xdir=build/export-test
rm -rf "$xdir" && mkdir -p "$xdir"
m=$xdir/models
echo "== converter: tiny models of the real classes, converter self-checks (tools/export/test_export.py)"
$xpy -m dpir_export.tiny "$m" >/dev/null
$xpy tools/export/test_export.py "$m"
sources=(--sd3 "$m/stable-diffusion-3-medium-diffusers" --dpir-transformer "$m/dpir/consolidated.00-of-01.pth"
    --vae-encoder "$m/dr-vae" --clip-b32 "$m/clip-vit-base-patch32" --clip-bigg "$m/CLIP-ViT-bigG-14-laion2B-39B-b160k"
    --t5 "$m/stable-diffusion-3-medium-diffusers/text_encoder_3" --prompt "quality=a high quality sharp photo"
    --clip-tokens 20 --text-tokens 16 --global-tile 48 --global-overlap 8 --name dpir-tiny)
echo "== converter: fp32 bundle with t5.onnx; graph checks and four restores (plain, guided + prompt + upscaled,"
echo "   CLIP on the initial restoration, caption through t5.onnx) against the PyTorch reference"
$xpy -m dpir_export "${sources[@]}" --dtype fp32 --out "$xdir/tiny-fp32" --export-t5 --verify-extended
echo "== converter: fp16 bundle with SD3's decoder, weights as external data, one process per step"
DPIR_EXPORT_EXTERNAL_BYTES=100000 $xpy -m dpir_export "${sources[@]}" --dtype fp16 --out "$xdir/tiny-fp16" \
    --isolate always --vae-decoder sd3
test -f "$xdir/tiny-fp16/transformer.onnx.data"
$xpy - "$xdir" <<'PY'
import json, sys
# The tiny degradation-robust VAE has a decoder of its own: exported by default, SD3's when asked.
for bundle, decoder in (("tiny-fp32", "dpir"), ("tiny-fp16", "sd3")):
    provenance = json.load(open(f"{sys.argv[1]}/{bundle}/dpir.json"))["provenance"]
    assert provenance == {"vae_decoder": decoder, "pos_embed": "regenerated"}, (bundle, provenance)
print("manifests record the decoder exported (dpir by default, sd3 when asked) and the regenerated pos_embed")
PY
echo "== converter: bf16 bundle (bfloat16 weights and boundaries, float32 arithmetic)"
$xpy -m dpir_export "${sources[@]}" --dtype bf16 --out "$xdir/tiny-bf16"
echo "== converter: fp16 bundle at opset 23 (attention as the standard Attention op), checks and a restore"
$xpy -m dpir_export "${sources[@]}" --dtype fp16 --opset 23 --out "$xdir/tiny-fp16-opset23"
$xpy - "$xdir/tiny-fp16-opset23/transformer.onnx" <<'PY'
import sys, onnx
ops = [n.op_type for n in onnx.load(sys.argv[1], load_external_data=False).graph.node]
assert ops.count("Attention") == 3, f"expected one Attention op per joint block, found {ops.count('Attention')}"
print("transformer.onnx at opset 23: one Attention op per joint block")
PY
echo "== GPU benchmark script (tools/bench/gpu.py), its CPU path on the tiny fp16 bundle (timings not checked)"
$xpy tools/bench/gpu.py --device cpu --ep cpu --bundle "$xdir/tiny-fp16" --models "$m" --size 96 --steps 3 \
    --runs 1 --tiled-size 0 --check-size 0 --onnxruntime-gpu build/onnxruntime/lib --json "$xdir/gpu.json"
$xpy - "$xdir/gpu.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
diff = report["rust_tiny-fp16"]["vs_pytorch"]["max_abs"]
assert diff < 0.05, f"Rust fp16 and PyTorch bf16 differ by {diff}"
print(f"Rust fp16 vs PyTorch bf16 on the tiny models: max abs {diff:.2e} (< 0.05)")
PY

# The GPU kit (tools/device): its calls played offline under the device's constraints (fresh tree, no network, no
# Rust, Python 3.12 with the device's package versions, CPU provider, tiny models). About 3 minutes.
echo "== GPU kit rehearsal (tools/device/rehearse.sh)"
bash tools/device/rehearse.sh
