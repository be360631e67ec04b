#!/usr/bin/env bash
# The OpenFX plug-in in a real host: MLT's melt 7.42 (Debian forky, in the chroot of tools/hosts/chroot.sh).
#
#   bash tests/ofx/melt.sh BUILD/dpir.ofx.bundle
#
# Copies the bundle (with the fetched ONNX Runtime beside dpir.ofx, as installed) and the fixture bundles into a
# scratch folder of the chroot, then: melt lists the plug-in from OFX_PLUGIN_PATH; renders a frame and a sequence
# of three pictures with the oracle bundle (8-bit, and 16-bit through MLT's short path); renders the tiny bundle and
# compares with the dpir CLI on the same picture; renders with a missing model, which melt does not report (it exits
# 0): the frame comes out black. melt hands over whole frames with negative rowBytes.
set -euo pipefail
cd "$(dirname "$0")/../.."
bundle=$1
py=build/venv/bin/python
root=$(bash tools/hosts/chroot.sh)
scratch=$(mktemp -d "$root/tmp/dpir-ofx.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
at=/tmp/$(basename "$scratch") # the scratch folder seen from inside the chroot

# melt needs /proc. Each run gets its own mount and PID namespaces with a fresh /proc: the mount is gone when the
# run ends, whatever happens to this script, and nobody else using the chroot sees it.
in_chroot() {
    unshare --mount --pid --fork --mount-proc="$root/proc" \
        chroot "$root" env OFX_PLUGIN_PATH="$at/plugins" "$@"
}
# melt IN... -filter dpir PARAMS... -consumer OUT: LOG gets stderr (melt prints Qt warnings without a display).
profile="-profile $at/profile"
render() {
    local log=$1
    shift
    in_chroot melt $profile "$@" >"$log" 2>&1
}

mkdir -p "$scratch/plugins"
cp -r "$bundle" "$scratch/plugins/"
cp -P build/onnxruntime/lib/libonnxruntime.so* "$scratch/plugins/$(basename "$bundle")/Contents/Linux-x86-64/"
cp -r tests/fixtures/bundles/oracle tests/fixtures/bundles/tiny "$scratch/"
$py tests/ofx/images.py inputs examples/images/landscape.png "$scratch"
size=$($py -c "from PIL import Image; print('%dx%d' % Image.open('$scratch/a.png').size)")
width=${size%x*}
height=${size#*x}
cat >"$scratch/profile" <<EOF
description=dpir test $size
frame_rate_num=25
frame_rate_den=1
width=$width
height=$height
progressive=1
sample_aspect_num=1
sample_aspect_den=1
display_aspect_num=$width
display_aspect_den=$height
colorspace=709
EOF
filter="-filter openfx.org.dpir.Restore"
png="f=image2 vcodec=png pix_fmt=rgb24 mlt_image_format=rgb"

echo "-- melt -query filters lists openfx.org.dpir.Restore (OFX_PLUGIN_PATH)"
in_chroot melt -query filters 2>/dev/null | grep -q -- "- openfx.org.dpir.Restore$"

echo "-- MLT's description of the filter (what Kdenlive builds its panel from): labels, the default model's values"
in_chroot env DPIR_MODEL="$at/tiny" melt -query filter=openfx.org.dpir.Restore >"$scratch/query.yml" 2>/dev/null
$py tests/ofx/metadata.py "$scratch/query.yml" model=string:default:Model steps=integer:28:"Quality (steps)" \
    guidance=float:1:"Prompt strength" provider=string:Auto:"Run on" seed=integer:1234:Seed \
    tile_size=integer:1024:"Tile size (pixels)" tile_overlap=integer:128:"Tile overlap (pixels)"
in_chroot env DPIR_MODEL="$at/oracle" melt -query filter=openfx.org.dpir.Restore >"$scratch/query.yml" 2>/dev/null
$py tests/ofx/metadata.py "$scratch/query.yml" tile_size=integer:256:"Tile size (pixels)" \
    tile_overlap=integer:32:"Tile overlap (pixels)"

echo "-- one frame, oracle bundle, 8-bit"
render "$scratch/frame.log" "abnormal:$at/a.png" in=0 out=0 $filter model="$at/oracle" steps=2 \
    -consumer "avformat:$at/frame.png" $png
$py tests/ofx/images.py same "$scratch/frame.png" "$scratch/a.png"

echo "-- a sequence of three pictures, two frames each, rendered on two frame threads, seed per frame"
render "$scratch/sequence.log" -verbose "abnormal:$at/a.png" in=0 out=1 "abnormal:$at/b.png" in=0 out=1 \
    "abnormal:$at/c.png" in=0 out=1 $filter model="$at/oracle" steps=2 seed_per_frame=1 \
    -consumer "avformat:$at/seq%03d.png" $png real_time=-2
expected=(a a b b c c)
for i in 0 1 2 3 4 5; do
    $py tests/ofx/images.py same "$scratch/seq00$((i + 1)).png" "$scratch/${expected[$i]}.png"
done
grep -q "frame-threaded" "$scratch/sequence.log"
loads=$(grep -c "DPIR Restore: loaded model" "$scratch/sequence.log" || true)
echo "model loads logged for 6 frames (an instance per frame): $loads"
[ "$loads" = 1 ]

echo "-- one frame, oracle bundle, 16-bit (MLT's rgba64 path: OfxBitDepthShort)"
render "$scratch/wide.log" -debug "avformat:$at/a16.png" in=0 out=0 $filter model="$at/oracle" steps=2 \
    -consumer "avformat:$at/wide.rgb48" f=rawvideo pix_fmt=rgb48le mlt_image_format=rgba64
grep -q "depth=OfxBitDepthShort" "$scratch/wide.log"
$py tests/ofx/images.py same "$scratch/wide.rgb48" "$scratch/a16.rgb48" --size "$size"

echo "-- one frame, tiny bundle: equals the dpir CLI on the same picture, and is not the input"
render "$scratch/tiny.log" "abnormal:$at/a.png" in=0 out=0 $filter model="$at/tiny" steps=3 \
    -consumer "avformat:$at/tiny.png" $png
./target/release/dpir restore --model tests/fixtures/bundles/tiny --steps 3 --quiet "$scratch/a.png" "$scratch/cli.png"
$py tests/ofx/images.py same "$scratch/tiny.png" "$scratch/cli.png"
$py tests/ofx/images.py differs "$scratch/tiny.png" "$scratch/a.png"

echo "-- a missing model: melt exits 0, the error is logged, the frame is black"
render "$scratch/missing.log" "abnormal:$at/a.png" in=0 out=0 $filter model="$at/no-such-bundle" \
    -consumer "avformat:$at/missing.png" $png
grep "DPIR Restore: this model cannot be used" "$scratch/missing.log" | head -n 1 | sed 's/^.*msg=/logged: /'
$py tests/ofx/images.py black "$scratch/missing.png"
echo "melt: passed"
