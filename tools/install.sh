#!/usr/bin/env bash
# Installs the C library under a prefix: the release build of libdpir (shared, with its SONAME links, and
# static), include/dpir.h, the C++ wrapper dpir.hpp, and pkg-config files dpir.pc (shared) and dpir-static.pc.
#
#   bash tools/install.sh --prefix DIR [--with-onnxruntime]
#
# --with-onnxruntime also copies the fetched ONNX Runtime (build/onnxruntime/lib, see tools/setup.sh) into
# DIR/lib, where libdpir finds it without any setting (it looks beside itself).
# Then: cc prog.c $(PKG_CONFIG_PATH=DIR/lib/pkgconfig pkg-config --cflags --libs dpir)
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    echo "usage: $0 --prefix DIR [--with-onnxruntime]" >&2
    exit 2
}
prefix=""
with_onnxruntime=0
while [ $# -gt 0 ]; do
    case "$1" in
    --prefix) [ $# -ge 2 ] || usage; prefix=$2; shift 2 ;;
    --prefix=*) prefix=${1#--prefix=}; shift ;;
    --with-onnxruntime) with_onnxruntime=1; shift ;;
    *) usage ;;
    esac
done
[ -n "$prefix" ] || usage
mkdir -p "$prefix"
prefix=$(cd "$prefix" && pwd)

cargo build --release --lib --features full --quiet
target=${CARGO_TARGET_DIR:-target}/release
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
abi=$(sed -n 's/^#define DPIR_ABI_VERSION \([0-9]*\)$/\1/p' include/dpir.h)
[ -n "$version" ] && [ -n "$abi" ] || { echo "cannot read the version or ABI version" >&2; exit 1; }

lib=$prefix/lib
mkdir -p "$lib/pkgconfig" "$prefix/include"
install -m 0755 "$target/libdpir.so" "$lib/libdpir.so.$version"
ln -sfn "libdpir.so.$version" "$lib/libdpir.so.$abi"
ln -sfn "libdpir.so.$abi" "$lib/libdpir.so"
install -m 0644 "$target/libdpir.a" "$lib/libdpir.a"
install -m 0644 include/dpir.h bindings/cpp/dpir.hpp "$prefix/include/"
if [ "$with_onnxruntime" = 1 ]; then
    cp -P build/onnxruntime/lib/libonnxruntime.so* "$lib/"
fi

# What Rust's standard library needs from the system when libdpir.a is linked (rustc --print native-static-libs).
native_libs="-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc"
description="DPIR diffusion image restoration on ONNX Runtime"
common="prefix=$prefix
libdir=\${prefix}/lib
includedir=\${prefix}/include
"
cat >"$lib/pkgconfig/dpir.pc" <<EOF
$common
Name: dpir
Description: $description (shared library)
Version: $version
Libs: -L\${libdir} -ldpir
Libs.private: $native_libs
Cflags: -I\${includedir}
EOF
cat >"$lib/pkgconfig/dpir-static.pc" <<EOF
$common
Name: dpir-static
Description: $description (static library)
Version: $version
Libs: \${libdir}/libdpir.a $native_libs
Cflags: -I\${includedir}
EOF
echo "installed dpir $version (ABI $abi) under $prefix"
