# Sourced by the scripts: where cargo builds, and "built from these inputs"
# stamps. Nothing here assumes `target/`: the target directory is the one
# cargo reports (CARGO_TARGET_DIR, build.target-dir, or the workspace's).

# cargo's target directory, as `cargo metadata` reports it.
cargo_target_dir() {
    cargo metadata --format-version 1 --no-deps |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
}

# cargo_executable NAME ARGS...: run `cargo ARGS... --message-format=json`
# (diagnostics rendered on stderr) and print the path of the executable
# cargo reports for the target NAME.
cargo_executable() {
    local name=$1
    shift
    cargo "$@" --message-format=json-render-diagnostics | python3 -c '
import json, sys
name, found = sys.argv[1], None
for line in sys.stdin:  # read to the end: cargo must not write to a closed pipe
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == name and m.get("executable"):
        found = m["executable"]
if not found:
    sys.exit(f"cargo named no {name} executable")
print(found)
' "$name"
}

# Build host-test (the mock broker and the other test servers; its build
# script builds both credential components and the test guests) and print
# its executable's path. Extra arguments go to `cargo build`.
build_host_test() {
    cargo_executable host-test build --package host-test "$@"
}

# Build the command line, vd-cred (with the demo, so host-test and both
# components too), and print its executable's path. Extra arguments go to
# `cargo build`.
build_cli() {
    cargo_executable vd-cred build --package vd-cred-cli "$@"
}

# inputs_digest WORDS PATH...: one SHA-256 over WORDS (tool versions, say)
# and every file under the PATHs (names and contents; node_modules and
# __pycache__ left out).
inputs_digest() {
    local words=$1
    shift
    {
        printf '%s\n' "$words"
        find "$@" -type f ! -path '*/node_modules/*' ! -path '*/__pycache__/*' -print0 |
            sort -z | xargs -0 sha256sum
    } | sha256sum | cut -c1-64
}

# fresh OUT DIGEST: OUT exists and its stamp (OUT.inputs) says it was built
# from DIGEST.
fresh() {
    [ -e "$1" ] && [ "$(cat "$1.inputs" 2>/dev/null)" = "$2" ]
}

# stamp OUT DIGEST: OUT was just built from DIGEST.
stamp() {
    printf '%s\n' "$2" >"$1.inputs"
}
