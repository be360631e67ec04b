#!/usr/bin/env bash
# The OpenFX plug-in's tests (run by tools/test.sh; about a minute on two cores):
# 1. builds dpir.ofx.bundle (plugins/ofx/build.sh) and the conformance host (tests/ofx/host.c), plus both with
#    AddressSanitizer;
# 2. the conformance host: tiles equal the full frame, regions of interest served exactly, every pixel format,
#    still frames, failures and aborts;
# 3. MLT's melt 7.42 in the Debian forky chroot (tests/ofx/melt.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
# The conformance host loads dpir.ofx, which links libdpir statically and ships no ONNX Runtime of its own here
# (melt's bundle below gets a copy): name the one tools/setup.sh fetched.
export DPIR_ORT_LIB=$PWD/build/onnxruntime/lib/libonnxruntime.so
out=build/ofx
tiny=model=tests/fixtures/bundles/tiny
oracle=model=tests/fixtures/bundles/oracle
id=org.dpir.Restore

echo "-- build dpir.ofx.bundle: libdpir.a linked in, only the OpenFX entry points exported"
bundle=$(bash plugins/ofx/build.sh --out "$out")
asan_bundle=$(bash plugins/ofx/build.sh --out "$out/asan" --asan)
diff <(nm -D --defined-only "$bundle/Contents/Linux-x86-64/dpir.ofx" | awk '{print $3}' | sort) \
    <(printf 'OfxGetNumberOfPlugins\nOfxGetPlugin\n')
cc -std=c11 -O1 -g -Wall -Wextra -Werror tests/ofx/host.c -o "$out/ofx_host" -ldl -lm -pthread
cc -std=c11 -O1 -g -fsanitize=address -fno-omit-frame-pointer -Wall -Wextra -Werror tests/ofx/host.c \
    -o "$out/asan/ofx_host" -ldl -lm -pthread
host() { "$out/ofx_host" "$@"; }
# tiny: tiles of 64 pixels (8 latent samples) overlapping by 16, so small frames hold several of dpir's tiles
small_tiles="tile_size=64 tile_overlap=16"

echo "-- conformance host: what the plug-in declares; the values start at the default model's own (DPIR_MODEL)"
described=$(DPIR_MODEL=tests/fixtures/bundles/tiny host "$bundle" $id describe)
echo "$described"
expect_param() { # DESCRIBE-OUTPUT NAME TEXT: the parameter's line holds TEXT
    grep -q "^  param $2 .*$3" <<<"$1" || { echo "FAILED: parameter $2 is not declared with: $3"; exit 1; }
}
expect_param "$described" model 'String .*default "default"'
expect_param "$described" steps 'Quality (steps) *default 28, 1\.\.1000$'
expect_param "$described" guidance 'Prompt strength *default 1, 1\.\.100$'
expect_param "$described" provider 'Run on *default Auto$'
expect_param "$described" seed 'default 1234, 0\.\.2147483647 in advanced$'
expect_param "$described" tile_size 'Tile size (pixels) *default 1024, 16\.\.1024 in advanced$'
expect_param "$described" tile_overlap 'Tile overlap (pixels) *default 128, 0\.\.1024 in advanced$'
expect_param "$described" advanced 'Group'
oracle_described=$(DPIR_MODEL=tests/fixtures/bundles/oracle host "$bundle" $id describe)
expect_param "$oracle_described" tile_size 'default 256, 4\.\.16384 in advanced$'
expect_param "$oracle_described" tile_overlap 'default 32, 0\.\.16384 in advanced$'
echo "the default model's values: tiny 28 steps, guidance 1, seed 1234, tiles of 1024 pixels overlapping by 128;"
echo "oracle (2 pixels per latent sample) tiles of 256 pixels overlapping by 32; all but the basics under Advanced"

echo "-- conformance host: a new model brings its values; New seed draws one; a folder of models is named"
changed=$(DPIR_MODEL=tests/fixtures/bundles/tiny host "$bundle" $id changed model=tests/fixtures/bundles/oracle/dpir.json \
    new_seed 2>&1)
echo "$changed"
for value in "steps = 28" "guidance = 1" "tile_size = 256" "tile_overlap = 32" "0 error messages"; do
    grep -qxF "  $value" <<<"$changed" || { echo "FAILED: after choosing the oracle model, not $value"; exit 1; }
done
! grep -qxF "  seed = 1234" <<<"$changed" || { echo "FAILED: New seed kept the seed"; exit 1; }
refused=$(DPIR_MODEL=tests/fixtures/bundles/tiny host "$bundle" $id changed model=tests/fixtures/bundles 2>&1)
grep -qF "did you mean one of its folders broken_black, broken_nan, oracle, tiny?" <<<"$refused" &&
    grep -qxF "  tile_size = 1024" <<<"$refused" ||
    { echo "$refused"; echo "FAILED: a folder of models was not refused with their names"; exit 1; }
echo "a folder holding models is refused with a message naming them, the values left as they were"

echo "-- tiles equal the full frame (tiny bundle, independent mode, whole-frame global context; each tile served"
echo "   exactly its RoI, outputs NaN-poisoned, rowBytes of both signs, render scales 1 and 0.5, two threads)"
host --frame 192x144 --tiles 80x56,53x71 "$bundle" $id tiles $tiny steps=2 $small_tiles

echo "-- the tiles of a frame share one dpir frame: 9 tiles compute the global prompt once (DPIR_TRACE prints each"
echo "   one): once for the full-frame render's instance, once for the tiles' instance; ten times without a frame"
count_prompts() { # the host's output on stderr, the number of global prompts on stdout
    local log
    log=$(DPIR_TRACE=1 host "$@" 2>&1) || { echo "$log" >&2; return 1; }
    grep -v "^dpir trace: " <<<"$log" >&2
    grep -c "^dpir trace: global prompt" <<<"$log" || true
}
shared=$(count_prompts --frame 192x144 --tiles 80x56 --scales 1 "$bundle" $id tiles $tiny steps=2 $small_tiles)
apart=$(count_prompts --serve-whole --frame 192x144 --tiles 80x56 --scales 1 "$bundle" $id tiles $tiny steps=2 \
    $small_tiles global_context=Region)
echo "global prompts for a full render and 9 tiles: $shared with a shared frame, $apart region by region"
test "$shared" = 2 && test "$apart" = 10

echo "-- Region global context: RoIs from dpir_region_of_interest, served exactly; the crop stands in for the frame"
echo "   in the global prompt, so tiles differ slightly (bounded at 0.02) ..."
host --frame 320x224 --tiles 96x80 --scales 1 --tolerance 0.02 "$bundle" $id tiles $tiny steps=2 $small_tiles \
    global_context=Region context_margin=0
echo "   ... and equal the full frame when the host hands over the whole frame anyway (as MLT and Resolve do)"
host --serve-whole --frame 192x144 --tiles 80x56 --scales 1 "$bundle" $id tiles $tiny steps=2 $small_tiles \
    global_context=Region

echo "-- every pixel format returns its input through the oracle bundle, in tiles (whole frame; Region with crops)"
host --frame 97x75 "$bundle" $id identity $oracle steps=1
host --frame 160x120 --scales 1 "$bundle" $id identity $oracle steps=1 global_context=Region context_margin=0 \
    tile_size=32 tile_overlap=8 | tail -n 3

echo "-- a still source does not flicker from frame to frame; with a seed per frame it does change"
host "$bundle" $id still $tiny steps=2
host "$bundle" $id varying $tiny steps=2 seed_per_frame=1
echo "-- a source edited upstream between two renders of one frame makes a new global prompt, not a stale one"
host "$bundle" $id edited $tiny steps=2

echo "-- failures are kOfxStatFailed with a message and a cleared window, never a crash; abort stops a render"
host "$bundle" $id fail model=/no/such/bundle
env -u DPIR_MODEL -u XDG_DATA_HOME HOME=/nonexistent "$out/ofx_host" "$bundle" $id fail
host "$bundle" $id fail model=tests/fixtures/bundles/broken_nan
host "$bundle" $id fail $tiny guidance=0.5
host --abort-after 0 "$bundle" $id abort $tiny
host --abort-after 3 "$bundle" $id abort $tiny

echo "-- AddressSanitizer (leaks included): host and plug-in C over tiles, formats, failures, abort"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
asan() { "$out/asan/ofx_host" "$@" | tail -n 1; }
asan --frame 192x144 --tiles 53x71 --scales 0.5 "$asan_bundle" $id tiles $tiny steps=2 $small_tiles
asan --frame 97x75 --scales 1 "$asan_bundle" $id identity $oracle steps=1
asan "$asan_bundle" $id fail model=/no/such/bundle 2>/dev/null
asan --abort-after 3 "$asan_bundle" $id abort $tiny
unset ASAN_OPTIONS

echo "-- MLT melt 7.42 in a Debian forky chroot (tests/ofx/melt.sh)"
unset DPIR_ORT_LIB # a path of this machine, not of the chroot: melt's bundle carries its own copy
cargo build --release --features full --quiet # the dpir CLI the tiny-bundle frame is compared with
bash tests/ofx/melt.sh "$bundle"
