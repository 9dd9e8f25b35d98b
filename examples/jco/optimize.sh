#!/usr/bin/env bash
# wasm-opt -Oz over the core modules inside a component, with the binaryen
# that jco bundles (pinned in package-lock.json). wasm-opt itself cannot read
# components; `jco opt` unpacks, optimises and re-packs them.
#   examples/jco/optimize.sh <in.wasm> <out.wasm>
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
[ -d "$here/node_modules" ] || npm ci --prefix "$here" --no-audit --no-fund
"$here/node_modules/.bin/jco" opt "$1" -o "$2" -- -Oz \
    --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
    --enable-mutable-globals --enable-multivalue --enable-reference-types
