#!/usr/bin/env bash
# Builds dpir for 64-bit Windows on this Linux machine, into build/windows/:
#
#   bash tools/windows/build.sh
#
# makes build/windows/dpir-VERSION-windows-x64/ and its zip (with a .sha256) beside it, which a user unpacks and
# runs:
#   dpir.exe, dpir.dll, onnxruntime.dll (+ onnxruntime_providers_shared.dll)   the CLI and the C library
#   include/dpir.h, include/dpir.hpp                                           the C ABI and the C++ wrapper
#   lib/dpir.lib (MSVC), lib/libdpir.dll.a (MinGW), lib/dpir.def              import libraries, exports
#   OFX/dpir.ofx.bundle/Contents/Win64/dpir.ofx (+ ONNX Runtime's DLLs)        the OpenFX plug-in
#   models/oracle/                                                             the pass-through test bundle
#   examples/, README.txt, licences
# ONNX Runtime comes from its pinned win_amd64 wheel (tools/fetch_onnxruntime.py --windows). Installs what it
# needs when missing: Rust's x86_64-pc-windows-gnu target, MinGW-w64 (Debian's gcc-mingw-w64-x86-64) and
# llvm-dlltool (llvm-14; it writes dpir.lib in MSVC's own import-library format). Debian packages need root.
set -euo pipefail
cd "$(dirname "$0")/../.."

rust_target=x86_64-pc-windows-gnu
rustup target list --installed | grep -qx $rust_target || rustup target add $rust_target
bash tools/debian-packages.sh gcc-mingw-w64-x86-64 llvm-14
python3 tools/fetch_onnxruntime.py --windows

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
cargo build --release --features full --quiet --target $rust_target
target=${CARGO_TARGET_DIR:-target}/$rust_target/release
onnxruntime=build/onnxruntime-windows/bin

name=dpir-$version-windows-x64
out=build/windows
stage=$out/$name
rm -rf "$stage" "$out/$name.zip" "$out/$name.zip.sha256"
mkdir -p "$stage/include" "$stage/lib" "$stage/models" "$stage/examples"

# The programs, without their debug information (line tables would double their size).
x86_64-w64-mingw32-strip -o "$stage/dpir.exe" "$target/dpir.exe"
x86_64-w64-mingw32-strip -o "$stage/dpir.dll" "$target/dpir.dll"
cp "$onnxruntime"/*.dll "$stage/"

# The C library: the header, the C++ wrapper, the exports as a .def, and import libraries for both toolchains.
cp include/dpir.h bindings/cpp/dpir.hpp "$stage/include/"
cp "$target/libdpir.dll.a" "$stage/lib/"
{
    echo "LIBRARY dpir.dll"
    echo "EXPORTS"
    bash tools/windows/exports.sh "$stage/dpir.dll" | sed 's/^/    /'
} >"$stage/lib/dpir.def"
llvm-dlltool-14 -m i386:x86-64 -d "$stage/lib/dpir.def" -D dpir.dll -l "$stage/lib/dpir.lib"

bash plugins/ofx/build.sh --windows --with-onnxruntime --out "$stage/OFX" >/dev/null
cp -r tests/fixtures/bundles/oracle "$stage/models/"
cp examples/restore.c examples/restore.cpp examples/images/landscape.png "$stage/examples/"
sed "s/@VERSION@/$version/g" tools/windows/README.txt >"$stage/README.txt"
cp "$onnxruntime/LICENSE" "$stage/onnxruntime-LICENSE.txt"
cp "$onnxruntime/ThirdPartyNotices.txt" "$stage/onnxruntime-ThirdPartyNotices.txt"

# Windows' own zip reader expects the folder inside; python's zipfile stores it as given, relative to $out.
(cd "$out" && python3 -m zipfile -c "$name.zip" "$name" && sha256sum "$name.zip" >"$name.zip.sha256")
echo "$out/$name.zip ($(du -h "$out/$name.zip" | cut -f1), its sha256 beside it); unpacked in $stage"
