#!/usr/bin/env bash
# Builds (once) a Debian forky chroot holding the real hosts the plug-in tests run: GIMP 3 (gimp-console-3 and
# libgimp-3.0-dev, to build the GIMP plug-in inside it) and MLT's melt with its OpenFX module. Bookworm has
# neither GIMP 3 nor an MLT with OpenFX. The chroot lives in the ignored build folder and is reused; CI builds it
# fresh. Prints the chroot's path.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=build/chroot/forky
if [ -f "$root/.complete" ]; then
    echo "$root"
    exit 0
fi
if ! command -v mmdebstrap >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null
fi
rm -rf "$root"
mkdir -p "$(dirname "$root")"
# Testing's release files can look expired against this machine's clock; recommends are not needed.
mmdebstrap --variant=apt --quiet \
    --aptopt='APT::Install-Recommends "false"' \
    --aptopt='Acquire::Check-Valid-Until "false"' \
    --include=gimp,libgimp-3.0-dev,gcc,libc6-dev,pkg-config,melt,libmlt7,libmlt-data,ca-certificates \
    forky "$root" >&2
touch "$root/.complete"
echo "$root"
