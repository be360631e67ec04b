#!/usr/bin/env bash
# The Windows build under Wine (run by tools/test.sh; about a minute once tools/windows/build.sh has built):
# 1. builds the Windows artefacts and zip (tools/windows/build.sh) and checks the exports against dpir.h; runs the
#    crate's unit tests built for Windows;
# 2. the CLI from the unpacked zip: the oracle bundle returns its input; the tiny bundle equals the Linux build;
# 3. the C test program, cross-compiled against dpir.dll through lib/dpir.lib, with its bundles and scratch
#    folders under a name in three scripts (UTF-8 paths through the C ABI and back); the C example through
#    lib/libdpir.dll.a; a program linked by lld-link (MSVC's command line) against dpir.lib alone;
# 4. the OpenFX conformance host, cross-compiled, on the zip's Win64 bundle: tiles equal the full frame, every
#    pixel format returns its input through the oracle bundle, a missing model fails the render with a message;
# 5. the CLI with input, output and model under that name; a missing onnxruntime.dll, and a missing Visual C++
#    runtime, are clear errors; without one beside it, dpir.exe finds ONNX Runtime in a Python's site-packages.
set -euo pipefail
cd "$(dirname "$0")/../.."
py=build/venv/bin/python

echo "-- build the Windows artefacts (tools/windows/build.sh)"
bash tools/windows/build.sh
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
zip=build/windows/dpir-$version-windows-x64.zip

# Everything runs from a fresh unpacking of the zip, as a user would.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
python3 -m zipfile -e "$zip" "$scratch"
app=$scratch/dpir-$version-windows-x64

echo "-- dpir.dll exports exactly the functions of dpir.h (lib/dpir.def); dpir.ofx only the OpenFX entry points"
diff <(sed -n 's/^    \(dpir_[a-z_]*\)$/\1/p' "$app/lib/dpir.def" | sort) \
    <(sed -n 's/^[a-z].*[ *]\(dpir_[a-z_]*\)(.*/\1/p' include/dpir.h | sort)
diff <(bash tools/windows/exports.sh "$app/OFX/dpir.ofx.bundle/Contents/Win64/dpir.ofx") \
    <(printf 'OfxGetNumberOfPlugins\nOfxGetPlugin\n')
echo "dpir.dll: $(grep -c '^    dpir_' "$app/lib/dpir.def") functions; dpir.ofx: OfxGetNumberOfPlugins, OfxGetPlugin"

# A Wine of the project's own (build/wine), quiet, with UTF-8 command lines. Wine 8 lacks Windows 10's
# bcryptprimitives.dll, which every Rust program imports: the prefix gets a stand-in (tests/windows/
# bcryptprimitives.c) when its Wine has none.
export WINEPREFIX=$PWD/build/wine WINEDEBUG=-all LC_ALL=C.UTF-8
unset DPIR_ORT_LIB ORT_DYLIB_PATH DPIR_MODEL
[ -d "$WINEPREFIX/drive_c/windows/system32" ] || wineboot --init >/dev/null 2>&1
system32=$WINEPREFIX/drive_c/windows/system32
if [ ! -e "$system32/bcryptprimitives.dll" ]; then
    x86_64-w64-mingw32-gcc -O2 -shared -Wall -Wextra -Werror tests/windows/bcryptprimitives.c \
        -o "$system32/bcryptprimitives.dll" -ladvapi32
fi
# A Windows program under Wine; ONNX Runtime's complaint that Wine has no DirectX device is noise, not a failure.
run() {
    local status=0
    wine "$@" 2>"$scratch/stderr" || status=$?
    grep -v "^Failed to create DXGI factory\." "$scratch/stderr" >&2 || true
    return $status
}

echo "-- the crate's unit tests, built for Windows, under Wine (ONNX Runtime named: no checkout path on Windows)"
windows_onnxruntime=$(winepath -w build/onnxruntime-windows/bin/onnxruntime.dll)
CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=wine DPIR_ORT_LIB=$windows_onnxruntime \
    cargo test --release --features full --target x86_64-pc-windows-gnu --lib --quiet 2>&1 |
    grep -E "^test result|panicked|FAILED"

# The decoded pixels of an image file: two files compared whatever their encoders wrote.
pixels() { $py -c "import sys; from PIL import Image; sys.stdout.buffer.write(Image.open(sys.argv[1]).tobytes())" "$1"; }

echo "-- the CLI restores with the oracle bundle: output equals input"
picture=examples/images/landscape.png
run "$app/dpir.exe" restore "$picture" "$scratch/oracle.png" --model "$app/models/oracle" --quiet
cmp <(pixels "$picture") <(pixels "$scratch/oracle.png")
echo "oracle: the picture restored to itself, every byte equal"

echo "-- the CLI restores with the tiny bundle as the Linux build does (float output, within 1e-5)"
cargo build --release --features full --quiet
./target/release/dpir restore "$picture" "$scratch/linux.npy" --model tests/fixtures/bundles/tiny --steps 4 --quiet
run "$app/dpir.exe" restore "$picture" "$scratch/windows.npy" --model tests/fixtures/bundles/tiny --steps 4 --quiet
$py - "$scratch/linux.npy" "$scratch/windows.npy" <<'PY'
import sys
import numpy as np
linux, windows = (np.load(p) for p in sys.argv[1:])
# Another compiler built the Windows ONNX Runtime, and Rust's maths calls another C library: equal up to rounding.
diff = float(np.abs(linux - windows).max())
assert linux.shape == windows.shape and diff <= 1e-5, f"Windows and Linux differ by {diff}"
print(f"tiny, 4 steps: Windows and Linux builds differ by at most {diff:.1e} (<= 1e-5)")
PY

# A folder named in three scripts, holding the bundles and the C test's scratch folder: every path the C test
# gives dpir (bundles, images, the per-user folder) and every path dpir gives back is UTF-8 with non-ASCII text.
named="$scratch/Fotos Ünïcödé 写真 Ελλάδα"
mkdir -p "$named/scratch/corrupt_graph"
cp -r tests/fixtures/bundles "$named/"
cp -r tests/fixtures/bundles/oracle/. "$named/scratch/corrupt_graph/"
echo "not a graph" >"$named/scratch/corrupt_graph/transformer.onnx"

echo "-- the C test program against dpir.dll (linked through lib/dpir.lib), paths under \"${named##*/}\""
strict="-Wall -Wextra -Werror -pedantic"
mingw() { x86_64-w64-mingw32-gcc "$@" -static -lpthread -lm; }
mingw -std=c99 $strict -O1 -I"$app/include" tests/c/test_capi.c "$app/lib/dpir.lib" -o "$app/test_capi.exe"
run "$app/test_capi.exe" "$named/bundles" "$named/scratch" | tail -n 3

echo "-- the C example through lib/libdpir.dll.a; a program linked by lld-link (MSVC's way) against lib/dpir.lib"
mingw -std=c99 $strict -O1 -I"$app/include" "$app/examples/restore.c" "$app/lib/libdpir.dll.a" -o "$app/restore.exe"
run "$app/restore.exe" "$app/models/oracle" "$picture" "$scratch/example.png" 2 2>/dev/null
test -s "$scratch/example.png"
clang-14 --target=x86_64-pc-windows-msvc -ffreestanding -O1 $strict -I"$app/include" -c tests/windows/msvc_link.c \
    -o "$scratch/msvc_link.obj"
lld-link-14 /nologo /entry:entry /subsystem:console /nodefaultlib "$scratch/msvc_link.obj" "$app/lib/dpir.lib" \
    /out:"$app/msvc_link.exe"
run "$app/msvc_link.exe"
echo "the MSVC-linked program found dpir.dll and read its version"

echo "-- the OpenFX conformance host on the zip's Win64 bundle (its own onnxruntime.dll beside dpir.ofx)"
mingw -std=c11 -O1 -Wall -Wextra -Werror tests/ofx/host.c -o "$scratch/ofx_host.exe"
bundle=$app/OFX/dpir.ofx.bundle
id=org.dpir.Restore
run "$scratch/ofx_host.exe" --frame 192x144 --tiles 80x56 "$bundle" $id tiles model=tests/fixtures/bundles/tiny \
    steps=2 tile_size=64 tile_overlap=16 | tail -n 1
run "$scratch/ofx_host.exe" --frame 97x75 "$bundle" $id identity "model=$named/bundles/oracle" steps=1 | tail -n 1
run "$scratch/ofx_host.exe" "$bundle" $id fail 'model=C:\no\such\bundle' | tail -n 1

echo "-- the CLI with its input, output and model under \"${named##*/}\""
cp "$picture" "$named/风景 été.png"
run "$app/dpir.exe" restore "$named/风景 été.png" "$named/恢复 résultat.png" --model "$named/bundles/oracle" --quiet
cmp <(pixels "$named/风景 été.png") <(pixels "$named/恢复 résultat.png")
echo "restored \"风景 été.png\" into \"恢复 résultat.png\": every byte equal"

echo "-- a missing onnxruntime.dll, then a missing Visual C++ runtime: exit status 1 and a message that says so"
mkdir -p "$scratch/alone"
cp "$app/dpir.exe" "$scratch/alone/"
expect_failure() { # MESSAGE-TEXT COMMAND...: the command fails with status 1 and prints MESSAGE-TEXT
    local text=$1 log status=0
    shift
    log=$("$@" 2>&1) || status=$?
    if [ "$status" != 1 ] || ! grep -qF "$text" <<<"$log"; then
        echo "$log"
        echo "FAILED: expected status 1 and \"$text\", got status $status"
        exit 1
    fi
    grep "^error:" <<<"$log" | cut -c1-200
}
expect_failure "Put onnxruntime.dll beside the program" \
    run "$scratch/alone/dpir.exe" restore "$picture" "$scratch/never.png" --model "$app/models/oracle"
WINEDLLOVERRIDES="msvcp140=d" expect_failure "needs the Microsoft Visual C++ Redistributable" \
    run "$app/dpir.exe" restore "$picture" "$scratch/never.png" --model "$app/models/oracle"
test ! -e "$scratch/never.png"
echo "no output was written"

echo "-- dpir.exe alone finds onnxruntime.dll in a Python's site-packages: the active one (VIRTUAL_ENV), then a"
echo "   virtual environment whose python.exe is on PATH"
venv=$scratch/venv
mkdir -p "$venv/Lib/site-packages/onnxruntime/capi" "$venv/Scripts"
cp "$app"/onnxruntime*.dll "$venv/Lib/site-packages/onnxruntime/capi/"
touch "$venv/pyvenv.cfg" "$venv/Scripts/python.exe" # looked at, never run
expected='onnxruntime: .*\\venv\\Lib\\site-packages\\onnxruntime\\capi\\onnxruntime.dll'
VIRTUAL_ENV=$(winepath -w "$venv") run "$scratch/alone/dpir.exe" info "$app/models/oracle" | grep -E "$expected"
WINEPATH=$(winepath -w "$venv/Scripts") run "$scratch/alone/dpir.exe" info "$app/models/oracle" | grep -E "$expected"
