#!/usr/bin/env bash
# Build the JavaScript agent into a component with componentize-js (pinned in
# package-lock.json):
#   examples/js-agent/build.sh <out.wasm>
# Features: stdio, random, clocks and fetch-event are disabled, so the
# component imports only wasi:io, wasi:http (outgoing-handler, types) and the
# credential (vibedata:cred-broker/token-credential).
# Override with JS_AGENT_DISABLE (a space-separated list, may be empty), e.g.
# JS_AGENT_DISABLE="fetch-event" to keep console output on stderr.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 <out.wasm>" >&2; exit 2; }
here="$(cd "$(dirname "$0")" && pwd)"
out="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
[ -d "$here/node_modules" ] || npm ci --prefix "$here" --no-audit --no-fund
disable="${JS_AGENT_DISABLE-stdio random clocks fetch-event}"
# componentize-js takes one WIT directory: the agent's world, with the
# credential's package (the repository's wit/) as its dependency.
wit="$(mktemp -d)"
trap 'rm -rf "$wit"' EXIT
mkdir -p "$wit/deps/cred-broker"
cp "$here/wit/world.wit" "$wit/"
cp "$here/../../wit/world.wit" "$wit/deps/cred-broker/"
# shellcheck disable=SC2086
node "$here/node_modules/@bytecodealliance/componentize-js/src/cli.js" \
    "$here/agent.js" --wit "$wit" --world-name js-agent -o "$out" \
    ${disable:+--disable $disable}
echo "$out: $(wc -c <"$out") bytes"
