#!/usr/bin/env bash
# Installs a built DPIR Restore plug-in into a GIMP 3 plug-in folder, as GIMP wants it
# (PLUG_IN_DIR/dpir-restore/dpir-restore), with the ONNX Runtime library beside it, where the plug-in finds it, and
# its help pages in help/ (the dialog's Help button opens them; no network needed).
#
#   bash plugins/gimp/install.sh [--plug-in-dir DIR] [--onnxruntime LIBDIR] [--uninstall] PLUGIN
#
# DIR defaults to $GIMP3_DIRECTORY/plug-ins when that is set, else ${XDG_CONFIG_HOME:-~/.config}/GIMP/X.Y/plug-ins
# for the installed GIMP X.Y (from pkg-config, else gimp-console-3 --version). LIBDIR (default
# build/onnxruntime/lib, fetched by tools/setup.sh) holds libonnxruntime.so*. --uninstall removes what an install
# put there. `make -C plugins/gimp install-gimp` builds and runs this.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
usage() {
    echo "usage: $0 [--plug-in-dir DIR] [--onnxruntime LIBDIR] [--uninstall] PLUGIN" >&2
    exit 2
}
dir=""
ort=$here/../../build/onnxruntime/lib
uninstall=0
plugin=""
while [ $# -gt 0 ]; do
    case "$1" in
    --plug-in-dir) [ $# -ge 2 ] || usage; dir=$2; shift 2 ;;
    --onnxruntime) [ $# -ge 2 ] || usage; ort=$2; shift 2 ;;
    --uninstall) uninstall=1; shift ;;
    -*) usage ;;
    *) [ -z "$plugin" ] || usage; plugin=$1; shift ;;
    esac
done
[ -n "$plugin" ] || [ "$uninstall" = 1 ] || usage

if [ -z "$dir" ]; then
    if [ -n "${GIMP3_DIRECTORY:-}" ]; then
        profile=$GIMP3_DIRECTORY
    else
        version=$(pkg-config --modversion gimp-3.0 2>/dev/null ||
            gimp-console-3 --version 2>/dev/null | sed -n 's/.* version \([0-9.]*\)$/\1/p' || true)
        version=$(echo "$version" | cut -d. -f1,2)
        [ -n "$version" ] || { echo "cannot tell which GIMP 3 is installed: pass --plug-in-dir" >&2; exit 1; }
        profile=${XDG_CONFIG_HOME:-$HOME/.config}/GIMP/$version
    fi
    dir=$profile/plug-ins
fi
dest=$dir/dpir-restore

if [ "$uninstall" = 1 ]; then
    rm -f "$dest/dpir-restore" "$dest"/libonnxruntime.so*
    rm -rf "$dest/help"
    [ ! -d "$dest" ] || rmdir "$dest"
    echo "removed DPIR Restore from $dir"
    exit 0
fi

[ -f "$plugin" ] || { echo "$plugin is missing: build it with make -C plugins/gimp" >&2; exit 1; }
ls "$ort"/libonnxruntime.so.1.* >/dev/null 2>&1 ||
    { echo "no ONNX Runtime in $ort: run tools/setup.sh (or python3 tools/fetch_onnxruntime.py)" >&2; exit 1; }
mkdir -p "$dest"
install -m 0755 "$plugin" "$dest/dpir-restore"
strip --strip-unneeded "$dest/dpir-restore" 2>/dev/null || true # 13 MB instead of 55 with debug information
cp -P "$ort"/libonnxruntime.so* "$dest/"
rm -rf "$dest/help"
cp -r "$here/help" "$dest/help"
echo "installed $dest/dpir-restore (with ONNX Runtime beside it); restart GIMP, then Filters > Enhance > DPIR Restore"
