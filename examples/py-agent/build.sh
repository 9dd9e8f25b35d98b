#!/usr/bin/env bash
# Build the Python agent into a component with componentize-py 0.25.1 (pinned
# in python/requirements-test.txt; scripts/test.sh installs it into
# target/venv):
#   examples/py-agent/build.sh <out.wasm>
# COMPONENTIZE_PY names the componentize-py to use (default: the one on PATH,
# else target/venv's).
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 <out.wasm>" >&2; exit 2; }
here="$(cd "$(dirname "$0")" && pwd)"
out="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
tool="${COMPONENTIZE_PY:-$(command -v componentize-py || echo "$here/../../target/venv/bin/componentize-py")}"
[ -x "$tool" ] || {
    echo "$0: no componentize-py at $tool: pip install -r python/requirements-test.txt" >&2
    exit 1
}
# Two WIT paths: the credential's package (the repository's wit/) and the
# agent's world, which imports it. The bindings (the wit_world module) are
# generated during the build; nothing generated is checked in. VIRTUAL_ENV
# is unset so that componentize-py does not search a virtualenv's
# site-packages: the agent needs only the standard library.
env -u VIRTUAL_ENV "$tool" --quiet -d "$here/../../wit" -d "$here/wit" -w vibedata:py-agent/py-agent \
    componentize agent -p "$here" -o "$out"
echo "$out: $(wc -c <"$out") bytes"
