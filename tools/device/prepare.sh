#!/usr/bin/env bash
# Builds the GPU kit: everything the borrowed GPU machine lacks (the release dpir, ONNX Runtime with its CUDA
# provider, the converter's missing wheels), split into parts that each fit one call of the device tool, and the
# exact sequence of calls in KIT/RUN.md. See tools/device/README.md.
#
#   bash tools/device/prepare.sh [--rehearsal]
#
# Writes .kit/ (ignored). --rehearsal writes build/rehearsal-kit/ instead, packing the CPU ONNX Runtime (small and
# quick) and gpu.py arguments for a CPU run on tiny models: tools/device/rehearse.sh plays that kit's calls.
set -euo pipefail
cd "$(dirname "$0")/../.."

rehearsal=0
case "${1:-}" in
--rehearsal) rehearsal=1 ;;
"") ;;
*) echo "usage: $0 [--rehearsal]" >&2; exit 2 ;;
esac

# A call carries at most 64 MiB: the working tree (a few MiB) and one folder of the kit.
call_mib=64
if [ $rehearsal = 1 ]; then
    kit=build/rehearsal-kit
    ort=build/onnxruntime/lib
    python3 tools/fetch_onnxruntime.py
    part_mib=4  # the CPU library is small: several parts all the same, so that reassembly is rehearsed too
    # gpu.py's arguments: the device's measurements, shrunk to seconds of CPU on tiny models.
    measure="--maker tiny --device cpu --ep cpu --size 96 --steps 3 --runs 1 --tiled-size 1056 --check-size 64"
else
    kit=.kit
    ort=build/onnxruntime-gpu/lib
    python3 tools/fetch_onnxruntime.py --gpu
    part_mib=52
    measure="--size 1024 --steps 28 --runs 3 --opset 18 23 --tiled-size 2048 --check-size 256"
fi
cargo build --release --bin dpir --features full --quiet

rm -rf "$kit" && mkdir -p "$kit/1/wheels"
# The converter's packages that the device's Python lacks (it has torch, transformers, onnx, onnxscript).
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 -d "$kit/1/wheels" \
    diffusers==0.42.1 importlib_metadata==10.2.0

# The payload unpacks in the repository root on the device, where gpu.py looks for it.
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
# (The rehearsal's CPU library stands in for the GPU one, in its place.)
lib=build/onnxruntime-gpu/lib
mkdir -p "$stage/target/release" "$stage/$lib"
strip -o "$stage/target/release/dpir" target/release/dpir
cp -P "$ort"/libonnxruntime.so* "$ort"/libonnxruntime_providers_shared.so "$stage/$lib/"
[ $rehearsal = 1 ] || cp "$ort/libonnxruntime_providers_cuda.so" "$stage/$lib/"
echo "compressing the payload (xz, a few minutes for the CUDA provider) ..."
tar -C "$stage" -cf - target build | xz -9 -T0 >"$stage/payload.tar.xz"
split -b "${part_mib}M" -d -a 1 "$stage/payload.tar.xz" "$stage/payload.part-"
parts=("$stage"/payload.part-*)
for i in "${!parts[@]}"; do
    mkdir -p "$kit/$((i + 1))"
    mv "${parts[$i]}" "$kit/$((i + 1))/"
done
calls=${#parts[@]}
(cd "$stage" && sha256sum payload.tar.xz) >"$kit/$calls/payload.sha256"

tree_kib=$(git ls-files -co --exclude-standard -z | du -c -k --files0-from=- | tail -n 1 | cut -f 1)
for i in $(seq 1 "$calls"); do
    kib=$(du -s -k "$kit/$i" | cut -f 1)
    if [ $((kib + tree_kib)) -gt $((call_mib * 1024 - 1024)) ]; then
        echo "error: call $i would carry $(((kib + tree_kib) / 1024)) MiB with the working tree (limit $call_mib)" >&2
        exit 1
    fi
done

# The calls: one per folder, carrying it; the first starts the conversions, the last measures.
{
    for i in $(seq 1 "$calls"); do
        if [ "$i" = 1 ]; then
            command="bash tools/device/kit.sh begin $measure"
        elif [ "$i" = "$calls" ]; then
            command="bash tools/device/kit.sh measure"
        else
            command="bash tools/device/kit.sh wait"
        fi
        printf '%s\t%s\n' "$kit/$i" "$command"
    done
} >"$kit/calls.tsv"
if [ $rehearsal = 1 ]; then
    # The rehearsal copies the kit into a fresh tree as .kit/, as the device tool would carry it.
    sed -i "s|^$kit/|.kit/|" "$kit/calls.tsv"
fi

{
    echo "# The GPU kit: $calls calls of the device tool"
    echo
    echo "Made by \`bash tools/device/prepare.sh\` at $(git rev-parse --short HEAD) ($(date -u +%Y-%m-%dT%H:%MZ))."
    echo "Make the calls back to back: the machine is given back 30 s after a call ends, with all it holds."
    echo "Give each call timeout_s 600. Calls 1 to $((calls - 1)) return in seconds; call $calls reassembles the"
    echo "payload, waits for the bundles and measures (about 6 minutes). Its \$OUT holds gpu.json and the logs."
    echo
    i=0
    while IFS=$'\t' read -r carry command; do
        i=$((i + 1))
        echo "$i. run command: \`$command\`"
        echo "   carry: [\"$carry\"]"
    done <"$kit/calls.tsv"
    echo
    echo "If call $calls fails after the bundles were made and the machine is still warm, run it again as it is."
    echo "Then give the machine back (give_back)."
} >"$kit/RUN.md"
du -sh "$kit"/*/ | sed 's/^/  /'
cat "$kit/RUN.md"
