#!/usr/bin/env bash
# Build the JavaScript agent into a component with componentize-js (pinned in
# package-lock.json):
#   examples/js-agent/build.sh <out.wasm>
# Features: stdio, random, clocks and fetch-event are disabled, so the
# component imports only wasi:io and wasi:http (outgoing-handler, types).
# Override with JS_AGENT_DISABLE (a space-separated list, may be empty), e.g.
# JS_AGENT_DISABLE="fetch-event" to keep console output on stderr.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 <out.wasm>" >&2; exit 2; }
here="$(cd "$(dirname "$0")" && pwd)"
out="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
[ -d "$here/node_modules" ] || npm ci --prefix "$here" --no-audit --no-fund
disable="${JS_AGENT_DISABLE-stdio random clocks fetch-event}"
# shellcheck disable=SC2086
node "$here/node_modules/@bytecodealliance/componentize-js/src/cli.js" \
    "$here/agent.js" --wit "$here/wit" --world-name js-agent -o "$out" \
    ${disable:+--disable $disable}
echo "$out: $(wc -c <"$out") bytes"
