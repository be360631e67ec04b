#!/usr/bin/env bash
# Runs a libFuzzer target over the C ABI for a while, guided by coverage of dpir's own Rust code and of the
# decoders it calls (png, JPEG, TIFF, .npy, JSON): libdpir.a is built for it with LLVM's SanitizerCoverage
# (edges, comparison operands) and with overflow checks and debug assertions on, so an arithmetic overflow is
# a caught panic (DPIR_STATUS_INTERNAL), which the targets refuse. The harness itself runs under
# AddressSanitizer.
#
#   bash fuzz/run.sh validation|files SECONDS
#
# Starts from the committed corpus fuzz/corpus/TARGET; new inputs go to a scratch folder that is removed. Fails
# on a crash, a leak, a caught panic, a failure without a message or an allocation over 4 GB, leaving the input
# that did it in build/fuzz/ (crash-*, leak-*, oom-* or timeout-*); replay it with
# `build/fuzz/fuzz_TARGET build/fuzz/crash-...`. Needs clang-14 with libFuzzer (tools/setup-tests.sh) and the
# fetched ONNX Runtime (tools/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

target=${1:?usage: fuzz/run.sh validation|files SECONDS}
seconds=${2:?usage: fuzz/run.sh validation|files SECONDS}
[ -f "fuzz/fuzz_$target.c" ] || { echo "no fuzz target fuzz/fuzz_$target.c" >&2; exit 2; }
out=build/fuzz
mkdir -p "$out"

# A target folder of its own: the instrumented build leaves the release build alone (and stays cached). The
# explicit --target keeps the flags off build scripts and proc macros, which run without libFuzzer.
coverage="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
host=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS=$coverage CARGO_TARGET_DIR=$out/target \
    cargo rustc --release --lib --features capi --crate-type staticlib --target "$host" --quiet
# What Rust's standard library needs from the system (rustc --print native-static-libs), as in dpir-static.pc.
clang-14 -std=c99 -Wall -Wextra -Werror -pedantic -O1 -g -fsanitize=fuzzer,address -Iinclude \
    "fuzz/fuzz_$target.c" "$out/target/$host/release/libdpir.a" -lgcc_s -lutil -lrt -lpthread -lm -ldl \
    -o "$out/fuzz_$target"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
log=$out/fuzz_$target.log
# Linked statically, the library finds no ONNX Runtime beside itself: it is named.
if ! DPIR_ORT_LIB=$PWD/build/onnxruntime/lib/libonnxruntime.so DPIR_FUZZ_BUNDLE=tests/fixtures/bundles/oracle \
    "$out/fuzz_$target" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 \
    -artifact_prefix="$out/" "$scratch" "fuzz/corpus/$target" >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz_$target failed; the input is in $out/ (crash-*, leak-*, oom-* or timeout-*)"
    exit 1
fi
# The corpus as loaded, the coverage reached (edges and features of dpir and its decoders), and the run.
grep -E "INITED" "$log" | sed 's/^#[0-9]*[[:space:]]*/loaded the corpus: /'
grep -E "^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE)" "$log" | tail -n 1 | sed 's/^#[0-9]*[[:space:]]*/finished: /'
grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb)" "$log"
