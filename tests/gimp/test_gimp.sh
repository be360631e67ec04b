#!/usr/bin/env bash
# The GIMP plug-in in a real GIMP 3. Builds plugins/gimp/dpir-restore.c against libgimp-3.0-dev inside the Debian
# forky chroot of tools/hosts/chroot.sh (built once, cached in build/chroot), linked with this machine's
# target/release/libdpir.a, installs it with plugins/gimp/install.sh into a scratch GIMP profile (ONNX Runtime
# beside it; the cancel run names it with DPIR_ORT_LIB instead) and drives gimp-console-3 in batch mode with the
# script-fu programs of tests/gimp/cases.scm; tests/gimp/check.py compares the saved images:
#
#   restore  tiny bundle: whole layer = the CLI's output for the same image and options; rectangle (also on a
#            moved layer) = the CLI's pixels inside, the input's outside; feathered selection blends the two.
#            oracle bundle (result = input): RGBA in joint tiles, 16-bit, linear float, half, gray, gray + alpha.
#   errors   model from the default location; a missing folder, a folder that is no bundle, a bundle that
#            outputs NaN, an option out of range, a layer too large: each fails and leaves the layer unchanged;
#            the batch exits non-zero.
#   missing  no model anywhere, no ONNX Runtime: reported, layer unchanged, non-zero exit.
#   cancel   the plug-in killed mid-restore (what GIMP's progress cancel does): layer unchanged.
#
# Everything runs in a private mount namespace (unshare) that holds the chroot's /proc and /dev/shm mounts, so
# they vanish with it, even on failure; the scratch folder inside the chroot is removed on exit. Needs root.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(cd "$(bash tools/hosts/chroot.sh)" && pwd)
py=build/venv/bin/python
cargo build --release --features full --quiet # libdpir.a and the CLI; nothing to do when tools/setup.sh just built them

work=$(mktemp -d "$root/tmp/dpir-gimp.XXXXXX")
trap 'rm -rf "$work"' EXIT
in=/tmp/$(basename "$work") # the same folder, seen from inside the chroot
mkdir -p "$work/src" "$work/out" "$work/ref" "$work/ort" "$work/bundles" "$work/home" "$work/default/dpir"
cp -r plugins/gimp/dpir-restore.c plugins/gimp/dialog.c plugins/gimp/dpir-restore.h plugins/gimp/build.sh \
    plugins/gimp/install.sh plugins/gimp/help include/dpir.h target/release/libdpir.a tests/gimp/cases.scm "$work/src/"
cp -P build/onnxruntime/lib/libonnxruntime.so* "$work/ort/"
cp -r tests/fixtures/bundles/oracle tests/fixtures/bundles/tiny tests/fixtures/bundles/broken_nan "$work/bundles/"
cp -r tests/fixtures/bundles/oracle "$work/default/dpir/model"
$py tests/gimp/check.py images "$work"
./target/release/dpir restore "$work/rgb.png" "$work/ref/tiny.png" --model tests/fixtures/bundles/tiny \
    --steps 4 --seed 99 --tile-size 32 --quiet

# Runs a command inside the chroot with a clean environment plus the VAR=VALUE arguments before it.
in_chroot() {
    unshare --mount --propagation private sh -c '
        root=$1; shift
        mount -t proc proc "$root/proc" && mount -t tmpfs tmpfs "$root/dev/shm" &&
            exec chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"' sh "$root" "$@"
}

plugin=profile/plug-ins/dpir-restore/dpir-restore
echo "== GIMP plug-in: build against libgimp-3.0-dev $(in_chroot pkg-config --modversion gimp-3.0) in Debian forky, install"
in_chroot CFLAGS="-Werror -Wformat=2 -Wshadow -Wmissing-prototypes -Wstrict-prototypes" bash "$in/src/build.sh" "$in/build/dpir-restore" "$in/src/libdpir.a" "$in/src"
in_chroot HOME="$in/home" GIMP3_DIRECTORY="$in/profile" bash "$in/src/install.sh" --onnxruntime "$in/ort" \
    "$in/build/dpir-restore"
libs=$(in_chroot ldd "$in/$plugin")
echo "installed: $(du -h "$work/$plugin" | cut -f1), $(echo "$libs" | grep -c '=>') shared libraries, none of them" \
    "dpir or ONNX Runtime: $(echo "$libs" | grep -c 'dpir\|onnxruntime' || true) found"

# Runs one script-fu program of cases.scm in gimp-console-3 with the scratch profile; VAR=VALUE arguments are
# added to the environment. Its output goes to $work/NAME.log; returns gimp-console-3's exit status.
gimp_batch() {
    local name=$1
    shift
    in_chroot HOME="$in/home" GIMP3_DIRECTORY="$in/profile" "$@" timeout 300 gimp-console-3 -i -d -f --quit \
        --batch-interpreter=plug-in-script-fu-eval \
        -b "(load \"$in/src/cases.scm\") (dpir-test-$name \"$in\")" >"$work/$name.log" 2>&1
}
show_log() { grep -v "^INFO: \|Glycin running without sandbox\|^$" "$work/$1.log" | sed 's/^/    /'; }
expect_in_log() { # NAME TEXT: the log must contain TEXT
    if grep -qF -- "$2" "$work/$1.log"; then echo "  ok  message: ...$2..."; else
        show_log "$1"
        echo "  FAILED  the $1 run does not say: $2"
        return 1
    fi
}

echo "== GIMP plug-in: restores (tiny and oracle bundles; model from the argument and from DPIR_MODEL)"
if ! gimp_batch restore DPIR_MODEL="$in/bundles/oracle"; then
    show_log restore
    echo "the restore batch failed"
    exit 1
fi
registered=$(grep -A12 'proc-def "plug-in-dpir-restore"' "$work/profile/pluginrc")
for entry in '"DP_IR Restore..."' '(menu-path "<Image>/Filters/Enhance")' '"RGB*, GRAY*"'; do
    grep -qF "$entry" <<<"$registered" || { echo "GIMP did not register $entry"; exit 1; }
done
echo "  ok  registered in GIMP: Filters > Enhance > DPIR Restore..., RGB and gray images"
$py tests/gimp/check.py restore "$work"

echo "== GIMP plug-in: help pages registered with GIMP"
grep -qF "(help-def \"org.dpir.restore\" \"file://$in/profile/plug-ins/dpir-restore/help\")" "$work/profile/pluginrc" ||
    { grep help-def "$work/profile/pluginrc"; echo "GIMP has not registered the help pages"; exit 1; }
page=$(grep -o 'id="plug-in-dpir-restore" ref="[^"]*"' "$work/profile/plug-ins/dpir-restore/help/en/gimp-help.xml")
[ -f "$work/profile/plug-ins/dpir-restore/help/en/$(echo "$page" | sed 's/.*ref="\(.*\)"/\1/')" ] ||
    { echo "the help page of plug-in-dpir-restore is missing"; exit 1; }
echo "  ok  help domain org.dpir.restore -> the installed help/en/index.html (no network)"

echo "== GIMP plug-in: the dialog in GIMP's window (tests/gimp/test_dialog.sh)"
bash tests/gimp/test_dialog.sh "$root" "$work"

echo "== GIMP plug-in: errors leave the layer unchanged (model from the default place)"
status=0
gimp_batch errors XDG_DATA_HOME="$in/default" || status=$?
[ "$status" != 0 ] || { show_log errors; echo "the errors batch exited 0"; exit 1; }
echo "  ok  gimp-console-3 exited $status"
expect_in_log errors "missing-folder.png failed as expected: Procedure execution of plug-in-dpir-restore failed on invalid input arguments"
expect_in_log errors "not-a-bundle.png failed as expected: Procedure execution of plug-in-dpir-restore failed: DPIR Restore: this model cannot be used: model bundle $in/bundles: not a dpir model bundle: it has no dpir.json; did you mean one of its folders broken_nan, oracle, tiny?"
expect_in_log errors "broken-bundle.png failed as expected: Procedure execution of plug-in-dpir-restore failed: DPIR Restore: the restore failed: the model produced an unusable result"
expect_in_log errors "bad-option.png failed as expected: Procedure execution of plug-in-dpir-restore failed: DPIR Restore: cannot restore this layer: invalid option: guidance must be between 1 and 100"
expect_in_log errors "too-large.png failed as expected: Procedure execution of plug-in-dpir-restore failed: DPIR Restore: cannot restore this layer: image too large"
$py tests/gimp/check.py errors "$work"

echo "== GIMP plug-in: no model and no ONNX Runtime are reported"
rm "$work/$(dirname "$plugin")"/libonnxruntime.so* # installed beside the plug-in, found there until now
status=0
gimp_batch missing XDG_DATA_HOME="$in/home/empty" || status=$?
[ "$status" != 0 ] || { show_log missing; echo "the missing batch exited 0"; exit 1; }
echo "  ok  gimp-console-3 exited $status"
expect_in_log missing "no-model.png failed as expected: Procedure execution of plug-in-dpir-restore failed: DPIR Restore: no model found: model bundle $in/home/empty/dpir/model: no model here and DPIR_MODEL is not set"
expect_in_log missing "no-onnxruntime.png failed as expected: Procedure execution of plug-in-dpir-restore failed: DPIR Restore: cannot load the model $in/bundles/oracle: ONNX Runtime"
$py tests/gimp/check.py missing "$work"

echo "== GIMP plug-in: killed mid-restore, as GIMP's progress cancel does"
gimp_batch cancel DPIR_ORT_LIB="$in/ort/libonnxruntime.so" &
batch=$!
pid=""
for _ in $(seq 300); do # the plug-in's process: the one running this scratch folder's binary
    for proc in /proc/[0-9]*; do
        if [ "$(readlink "$proc/exe" 2>/dev/null)" = "$work/$plugin" ]; then pid=${proc#/proc/}; fi
    done
    [ -z "$pid" ] || break
    sleep 0.1
done
[ -n "$pid" ] || { wait $batch || true; show_log cancel; echo "the plug-in never started"; exit 1; }
restoring=0
for _ in $(seq 300); do # until its restore thread runs (the model is loaded), plus a moment into the sampling
    if grep -qx dpir-worker "/proc/$pid"/task/*/comm 2>/dev/null; then restoring=1; break; fi
    sleep 0.1
done
sleep 1
[ "$restoring" = 1 ] && [ -d "/proc/$pid" ] ||
    { wait $batch || true; show_log cancel; echo "the plug-in was not restoring when it was to be killed"; exit 1; }
kill -KILL "$pid" 2>/dev/null || true # had it finished, the batch would say so
status=0
wait $batch || status=$?
[ "$status" = 0 ] || { show_log cancel; echo "the cancel batch failed ($status)"; exit 1; }
expect_in_log cancel "cancel.png failed as expected: Procedure execution of plug-in-dpir-restore failed"
$py tests/gimp/check.py cancel "$work"

echo "== GIMP plug-in: uninstall"
in_chroot HOME="$in/home" GIMP3_DIRECTORY="$in/profile" bash "$in/src/install.sh" --uninstall
[ ! -e "$work/$(dirname "$plugin")" ] || { echo "the plug-in's folder is still there"; exit 1; }
