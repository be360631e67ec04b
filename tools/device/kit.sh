#!/usr/bin/env bash
# The GPU machine's side of the kit (tools/device/README.md), run by the calls in .kit/RUN.md in the repository
# root, with the device's own python3 (PyTorch with CUDA, transformers, onnx) and nothing else installed.
#
#   bash tools/device/kit.sh begin [GPU.PY ARGS]   install the carried wheels; make and convert the bundles in the
#                                                  background (tools/bench/gpu.py --prepare-only), which goes on
#                                                  while the next calls carry the rest of the payload
#   bash tools/device/kit.sh wait                  keep the part this call carried; say how the conversion is doing
#   bash tools/device/kit.sh measure               reassemble and check the payload, wait for the bundles, run
#                                                  tools/bench/gpu.py; gpu.json and the logs go to $OUT
#   bash tools/device/kit.sh quick                 reassemble and check the payload, then check the runtime's CUDA
#                                                  path on the repository's small bundles (no full-size conversion,
#                                                  under two minutes; the parts come with `wait` calls, not `begin`)
#
# (`convert` is the background job that `begin` starts.)
set -uo pipefail
cd "$(dirname "$0")/../.."
work=build/device
export PYTHONPATH=$PWD/$work/site${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1

# Seconds `measure` waits for the bundles; the device tool's call limit is 600 s in all.
bundles_wait=${DPIR_KIT_BUNDLES_WAIT:-330}

# Moves the carried parts and wheels into build/device, which no later call's copy of the tree can touch.
collect_parts() {
    mkdir -p $work/parts $work/wheels
    for part in .kit/*/payload.* .kit/*/wheels/*.whl; do
        [ -e "$part" ] || continue
        case "$part" in
        *.whl) mv "$part" $work/wheels/ ;;
        *) mv "$part" $work/parts/ ;;
        esac
    done
    echo "payload parts here: $(cd $work/parts && echo payload.part-*)"
}

# Installs the carried wheels (the converter's missing packages) into build/device/site.
install_wheels() {
    python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $work/site \
        $work/wheels/*.whl
}

progress() {
    if [ ! -f $work/started ]; then
        echo "bundles: none being made"
        return
    elif [ -f $work/converted ]; then
        echo "bundles: done (status $(cat $work/converted)) after $(cat $work/converted-after) s"
    else
        echo "bundles: in progress for $(($(date +%s) - $(cat $work/started))) s"
    fi
    tail -n 3 $work/convert.log | sed 's/^/  | /'
}

# Joins the carried parts, checks them against the sha256 made with them and unpacks the payload.
unpack() {
    echo "== payload"
    collect_parts
    cat $work/parts/payload.part-* >$work/payload.tar.xz
    (cd $work && sha256sum -c parts/payload.sha256) || return 1
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(".", filter="tar")' \
        $work/payload.tar.xz || return 1
    rm $work/payload.tar.xz
    ls -l target/release/dpir build/onnxruntime*/lib/
    if command -v nvidia-smi >/dev/null; then nvidia-smi; fi
}

case "${1:-}" in
begin)
    shift
    mkdir -p $work
    if [ $# -gt 0 ]; then printf '%s\n' "$@"; fi >$work/args
    date +%s >$work/started
    rm -f $work/converted
    collect_parts
    install_wheels || exit 1
    python3 -c 'import torch, diffusers, transformers, onnx, onnxscript, numpy
print("python", __import__("sys").version.split()[0], "torch", torch.__version__, "diffusers", diffusers.__version__,
      "transformers", transformers.__version__, "onnx", onnx.__version__, "onnxscript", onnxscript.__version__,
      "numpy", numpy.__version__)
print("GPU:", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")' || exit 1
    nproc && free -g | head -n 2 && df -h . | tail -n 1
    # A new session, so that the conversions outlive this call.
    setsid nohup bash tools/device/kit.sh convert >$work/convert.log 2>&1 </dev/null &
    sleep 5
    progress
    ;;
convert)
    mapfile -t args <$work/args
    started=$(cat $work/started)
    python3 tools/bench/gpu.py --prepare-only "${args[@]}"
    status=$?
    echo $(($(date +%s) - started)) >$work/converted-after
    echo $status >$work/converted
    ;;
wait)
    collect_parts
    progress
    ;;
measure)
    out=${OUT:?the device tool sets OUT}
    log=$out/gpu.log
    {
        unpack || exit 1
        echo "== bundles"
        for _ in $(seq "$bundles_wait"); do
            [ -f $work/converted ] && break
            sleep 1
        done
        progress
        cp $work/convert.log "$out/"
        [ "$(cat $work/converted 2>/dev/null)" = 0 ] || { echo "error: the bundles are not ready"; exit 1; }
        echo "== measure"
        mapfile -t args <$work/args
        python3 tools/bench/gpu.py "${args[@]}" --json "$out/gpu.json"
    } 2>&1 | tee "$log"
    exit "${PIPESTATUS[0]}"
    ;;
quick)
    out=${OUT:?the device tool sets OUT}
    {
        unpack || exit 1
        if ls $work/wheels/*.whl >/dev/null 2>&1; then install_wheels || exit 1; fi
        echo "== the runtime on CUDA against the CPU, the repository's bundles"
        python3 tools/device/quick.py --json "$out/quick.json"
    } 2>&1 | tee "$out/quick.log"
    exit "${PIPESTATUS[0]}"
    ;;
*)
    echo "usage: $0 begin [GPU.PY ARGS] | wait | measure | quick" >&2
    exit 2
    ;;
esac
