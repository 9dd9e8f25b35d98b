#!/usr/bin/env python3
"""One build of wasmtime (and of everything else) for the demo, the tests and
the test wheel.

Cargo resolves a crate's features per invocation, over the packages it
builds: `cargo run -p vd-cred-cli` (the demo), `cargo build -p host-test`
(the mock broker, for the Python tests and jco), `cargo test --workspace`
(the tests) and maturin's build of `vd-cred-python` (the test wheel) each
get their own set, and a crate built with other features is built again, with
everything above it (wasmtime takes minutes on two cores). The CLI's,
host-test's and vd-cred-python's manifests ask for what the workspace's tests resolve (see
their comments); this check says when they stop agreeing.

It compares `cargo tree`'s features for the demo's, the mock broker's and
the test wheel's packages with the tests' and fails naming each crate that one of them
resolves with other features. Crates only one of them has (pyo3, say) do not
count. Run from the repository's root (scripts/test.sh does).
"""

import subprocess
import sys


def resolved(*args):
    """{(name, version): {signature: line}} for `cargo tree` with args.

    A crate is built once for each set of features it is resolved with and
    each set of builds of what it depends on (dev-dependencies aside), so a
    node's signature is its line (name, version, features) with the
    signatures of its normal and build dependencies.
    """
    out = subprocess.run(
        ["cargo", "tree", "--no-dedupe", "--format", "{p} [{f}]", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    crates = {}
    # [level, line, child signatures, kind of the children being listed]
    stack = []

    def close(level):
        while stack and stack[-1][0] >= level:
            _, line, children, _ = stack.pop()
            if line.endswith("(*)"):  # a cycle, through a dev-dependency
                continue
            signature = hash((line, frozenset(children)))
            name, version = line.split()[:2]
            crates.setdefault((name, version), {})[signature] = line
            if stack and stack[-1][3] != "dev":
                stack[-1][2].append(signature)

    for raw in out.splitlines():
        # Each level is four characters wide ("│   ", "├── ", ...).
        text = raw.lstrip("│├└─ \u00a0")
        if not text:
            continue
        level = (len(raw) - len(text)) // 4
        if text.startswith("["):  # [build-dependencies] or [dev-dependencies], at the parent's level
            close(level + 1)
            stack[-1][3] = "dev" if text.startswith("[dev") else "build"
            continue
        close(level)
        stack.append([level, text.strip(), [], "normal"])
    close(0)
    return crates


def main():
    tests = resolved("--workspace", "--exclude", "vd-cred-python", "--edges", "normal,build,dev")
    others = {
        "the demo (cargo run -p vd-cred-cli)": ["--package", "vd-cred-cli"],
        "the mock broker (cargo build -p host-test)": ["--package", "host-test"],
        "the test wheel (python/, --features test-hooks)": [
            "--package",
            "vd-cred-python",
            "--features",
            "test-hooks",
        ],
    }
    failures = []
    for what, args in others.items():
        for crate, builds in sorted(resolved(*args, "--edges", "normal,build").items()):
            if crate not in tests:
                continue
            for signature, line in builds.items():
                if signature not in tests[crate]:
                    failures.append(
                        f"{what} builds {line} (or its dependencies) otherwise than the tests, "
                        f"which build: {sorted(set(tests[crate].values()))}"
                    )
    if failures:
        print("\n".join(failures), file=sys.stderr)
        sys.exit(
            "one-build: the crates above would be built twice (and everything that depends on "
            "them, wasmtime included): ask for the tests' features in host-test/Cargo.toml's "
            "[build-dependencies] or python/Cargo.toml's test-hooks feature"
        )


if __name__ == "__main__":
    main()
