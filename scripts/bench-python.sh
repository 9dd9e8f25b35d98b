#!/usr/bin/env bash
# The Python side-by-side benchmark: builds the wheel as users get it (the
# `wheel` profile, as `pip install ./python` does: an optimized wasmtime build,
# about 10 minutes the first time on 2 cores), installs it
# with the original credential in venv-bench in cargo's target directory, and runs
# python/bench/compare.py, then python/bench/production.py (threads and forked
# workers), against host-test's fast loopback broker. The process rows run
# vd-cred as `cargo run -p vd-cred-cli` builds it (debug), and the Python
# agent (built by scripts/test.sh into cargo's target directory) when it is
# there.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
target=$(cargo_target_dir)
venv=$target/venv-bench
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r python/requirements-test.txt
host_test=$(build_host_test)
vd_cred=$(build_cli)
agent=()
[ -e "$target/py-agent.wasm" ] && agent=(--agent "$target/py-agent.wasm")
rm -rf "$target/wheels-release"
"$venv/bin/maturin" build --quiet --manifest-path python/Cargo.toml --out "$target/wheels-release" \
    --interpreter "$venv/bin/python"
wheel=$(ls "$target"/wheels-release/*.whl)
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps "$wheel"
"$venv/bin/python" python/bench/compare.py --broker "$host_test" --wheel "$wheel" --cli "$vd_cred" "${agent[@]}" "$@"
"$venv/bin/python" python/bench/production.py --broker "$host_test"
