#!/usr/bin/env bash
# Builds the OpenFX plug-in bundle with libdpir linked in statically:
#
#   bash plugins/ofx/build.sh [--out DIR] [--with-onnxruntime] [--asan | --windows]
#
# makes DIR/dpir.ofx.bundle/Contents/Linux-x86-64/dpir.ofx (DIR defaults to build/ofx) and prints the bundle's path.
# --with-onnxruntime also copies the fetched ONNX Runtime (build/onnxruntime/lib, see tools/setup.sh) beside
# dpir.ofx, where libdpir finds it without any setting. --asan builds the plug-in's C with AddressSanitizer (for a
# host built with it too; the tests do). Install by copying dpir.ofx.bundle into a folder on OFX_PLUGIN_PATH or
# /usr/OFX/Plugins.
#
# --windows cross-builds Contents/Win64/dpir.ofx with MinGW instead (tools/windows/build.sh sets that up), and
# --with-onnxruntime then copies build/onnxruntime-windows/bin's DLLs. Install into
# C:\Program Files\Common Files\OFX\Plugins.
set -euo pipefail
cd "$(dirname "$0")/../.."

usage() {
    echo "usage: $0 [--out DIR] [--with-onnxruntime] [--asan | --windows]" >&2
    exit 2
}
out=build/ofx
with_onnxruntime=0
windows=0
flags="-O2 -Wl,-z,defs -Wl,--strip-debug"
while [ $# -gt 0 ]; do
    case "$1" in
    --out) [ $# -ge 2 ] || usage; out=$2; shift 2 ;;
    --out=*) out=${1#--out=}; shift ;;
    --with-onnxruntime) with_onnxruntime=1; shift ;;
    --asan) flags="-O1 -g -fsanitize=address -fno-omit-frame-pointer"; shift ;;
    --windows) windows=1; shift ;;
    *) usage ;;
    esac
done

if [ "$windows" = 1 ]; then
    cargo build --release --lib --features full --quiet --target x86_64-pc-windows-gnu
    binary=$out/dpir.ofx.bundle/Contents/Win64
    mkdir -p "$binary"
    # Only the two entry points are marked for export, so nothing of libdpir is. winpthreads and libgcc are linked
    # in (-static): the bundle needs no MinGW DLL. The libraries after libdpir.a are what Rust's standard library
    # needs on Windows (rustc --print native-static-libs).
    x86_64-w64-mingw32-gcc -std=c11 -pedantic -Wall -Wextra -Werror -O2 -shared -s -Iinclude \
        plugins/ofx/dpir_ofx.c "${CARGO_TARGET_DIR:-target}/x86_64-pc-windows-gnu/release/libdpir.a" \
        -o "$binary/dpir.ofx.tmp" -Wl,--gc-sections -static -lpthread -lkernel32 -lntdll -luserenv -lws2_32 -ldbghelp
    mv "$binary/dpir.ofx.tmp" "$binary/dpir.ofx"
    if [ "$with_onnxruntime" = 1 ]; then
        cp build/onnxruntime-windows/bin/*.dll "$binary/"
    fi
    echo "$out/dpir.ofx.bundle"
    exit 0
fi

cargo build --release --lib --features full --quiet
target=${CARGO_TARGET_DIR:-target}/release
binary=$out/dpir.ofx.bundle/Contents/Linux-x86-64
mkdir -p "$binary"
# Only OfxGetPlugin and OfxGetNumberOfPlugins are exported; -z nodelete keeps the plug-in mapped if a host
# dlcloses it while ONNX Runtime threads or Rust thread-locals of libdpir are alive. The libraries after libdpir.a
# are what Rust's standard library needs (rustc --print native-static-libs).
cc -std=c11 -pedantic -Wall -Wextra -Werror $flags -fPIC -shared -fvisibility=hidden -Iinclude \
    plugins/ofx/dpir_ofx.c "$target/libdpir.a" -o "$binary/dpir.ofx.tmp" \
    -Wl,--version-script=plugins/ofx/exports.map -Wl,--gc-sections -Wl,-z,nodelete \
    -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc
mv "$binary/dpir.ofx.tmp" "$binary/dpir.ofx"
if [ "$with_onnxruntime" = 1 ]; then
    cp -P build/onnxruntime/lib/libonnxruntime.so* "$binary/"
fi
echo "$out/dpir.ofx.bundle"
