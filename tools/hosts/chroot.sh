#!/usr/bin/env bash
# Builds (once) a Debian forky chroot holding the real hosts the plug-in tests run: GIMP 3 (gimp-3,
# gimp-console-3 and libgimp-3.0-dev, to build the GIMP plug-in inside it), Xvfb, a window manager and xdotool to
# drive GIMP's window, and MLT's melt with its OpenFX module. Bookworm has neither GIMP 3 nor an MLT with OpenFX.
# The chroot lives in the ignored build folder and is reused (packages added here since are installed into it);
# CI builds it fresh. Prints the chroot's path.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=build/chroot/forky
packages=gimp,libgimp-3.0-dev,gcc,libc6-dev,pkg-config,melt,libmlt7,libmlt-data,ca-certificates
packages=$packages,xvfb,xdotool,matchbox-window-manager
if [ -f "$root/.complete" ]; then
    missing=$(chroot "$root" dpkg-query -W -f '${db:Status-Status} ${Package}\n' ${packages//,/ } 2>&1 |
        grep -v '^installed ' || true)
    if [ -n "$missing" ]; then
        unshare --mount --propagation private sh -c '
            mount -t proc proc "$1/proc" && exec chroot "$1" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
                DEBIAN_FRONTEND=noninteractive sh -c "apt-get -o Acquire::Check-Valid-Until=false update -qq &&
                    apt-get install -y -qq --no-install-recommends $2 >/dev/null"' sh "$root" "${packages//,/ }" >&2
    fi
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
    --include="$packages" \
    forky "$root" >&2
touch "$root/.complete"
echo "$root"
