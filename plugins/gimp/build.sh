#!/usr/bin/env bash
# Builds the DPIR Restore plug-in for GIMP 3: dpir-restore.c and dialog.c linked with the static libdpir.a, so the
# plug-in is one file (it needs only glibc, GIMP's own libraries and, at run time, ONNX Runtime).
#
#   bash plugins/gimp/build.sh OUTPUT [LIBDPIR_A [INCLUDE_DIR]]
#
# LIBDPIR_A defaults to target/release/libdpir.a (cargo build --release --lib --features full), INCLUDE_DIR to include/ (dpir.h).
# Needs a C compiler ($CC, default cc), pkg-config and libgimp-3.0-dev; extra flags come from $CFLAGS.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ $# -ge 1 ] && [ $# -le 3 ] || { echo "usage: $0 OUTPUT [LIBDPIR_A [INCLUDE_DIR]]" >&2; exit 2; }
out=$1
libdpir=${2:-$here/../../target/release/libdpir.a}
include=${3:-$here/../../include}
[ -f "$libdpir" ] || { echo "$libdpir is missing: run cargo build --release --lib --features full" >&2; exit 1; }
[ -f "$include/dpir.h" ] || { echo "$include/dpir.h is missing" >&2; exit 1; }
gimp_libs=$(pkg-config --libs gimp-3.0 gimpui-3.0) || {
    echo "GIMP 3's development files are missing: install libgimp-3.0-dev (Debian trixie or newer)" >&2
    exit 1
}
# GIMP's and GTK's headers as system headers: warnings are for this plug-in's code.
gimp_cflags=$(pkg-config --cflags gimp-3.0 gimpui-3.0 | sed 's/-I/-isystem /g')
mkdir -p "$(dirname "$out")"
# What Rust's standard library needs from the system when libdpir.a is linked (rustc --print native-static-libs).
# shellcheck disable=SC2086
${CC:-cc} -std=gnu11 -O2 -g -Wall -Wextra -Wno-unused-parameter ${CFLAGS:-} $gimp_cflags -I"$include" \
    "$here/dpir-restore.c" "$here/dialog.c" -o "$out" \
    $gimp_libs "$libdpir" -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc -Wl,--gc-sections
