#!/usr/bin/env bash
# Prints the names a Windows DLL exports, one a line, in its export table's order:
#
#   bash tools/windows/exports.sh FILE.dll
set -euo pipefail
x86_64-w64-mingw32-objdump -p "$1" | sed -n '/^\[Ordinal\/Name Pointer\] Table/,/^$/s/^\s*\[ *[0-9]*\] \(.*\)$/\1/p'
