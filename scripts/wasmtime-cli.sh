#!/usr/bin/env bash
# The stock wasmtime 48 CLI, with nothing of ours on the host side but the
# loopback mock broker (`host-test mock-broker`), mints a token with the
# credential component:
#
#   1. the WASI 0.3 build (async exports, WASI 0.3.0 imports only):
#      `wasmtime run -S p3 -S http --invoke 'get-token([...])'` prints
#      ok({token: "<the broker's token>", expires-on: <now + 3600>}), and the
#      broker received exactly one request: POST <base>/token, body
#      {"audience":"vault"}, Authorization: Bearer <the bearer written here>;
#   2. the same with the WASI 0.2 build (`-S http`), for comparison;
#   3. the 0.3 build with the bearer file missing prints
#      err(bearer-unavailable("...")) naming the file, VD_CREDENTIAL_FILE and
#      the preopen, and sends nothing.
#
# Builds host-test (a no-op when built; it builds both components) and needs
# wasmtime 48.x as `${WASMTIME:-wasmtime}`. Offline, loopback only. Exits non-zero with
# a message naming what differs.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'wasmtime-cli: %s\n' "$*"; }
fail() {
    printf 'wasmtime-cli: FAIL: %s\n' "$*" >&2
    exit 1
}

install_hint="cargo install --locked --debug wasmtime-cli --version 48.0.8 --no-default-features \
--features run,cranelift,component-model,component-model-async,wasi-http,parallel-compilation"
wasmtime=${WASMTIME:-wasmtime}
command -v "$wasmtime" >/dev/null 2>&1 || fail "$wasmtime not found; install it with: $install_hint"
wasmtime_version=$("$wasmtime" --version 2>/dev/null | awk '{print $2}') || true
case "$wasmtime_version" in
48.*) ;;
*) fail "$wasmtime is ${wasmtime_version:-(unknown version)}, 48.x expected; install it with: $install_hint" ;;
esac

. scripts/lib.sh
# host-test, and through its build script both components (a no-op when built).
host_test=$(build_host_test --quiet) || fail "cargo build --package host-test failed"
guest="$(cargo_target_dir)/guest"
p3=$guest/p3/wasm32-unknown-unknown/release/vd_cred_broker_p3.wasm
p2=$guest/wasm32-wasip2/release/vd_cred_broker.wasm
for f in "$p3" "$p2"; do
    [ -e "$f" ] || fail "$f is missing after 'cargo build -p host-test' (its build script builds both components)"
done
command -v python3 >/dev/null 2>&1 || fail "python3 not found (it reads the broker's request log)"
say "wasmtime $wasmtime_version ($(command -v "$wasmtime"))"

work=$(mktemp -d "${TMPDIR:-/tmp}/wasmtime-cli.XXXXXX")
broker_pid=
cleanup() {
    exec 3>&- 4<&- # EOF on its stdin: the broker exits
    if [ -n "$broker_pid" ]; then
        kill "$broker_pid" 2>/dev/null || true
        wait "$broker_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# The mock broker, driven over its stdin (see `host-test` usage): it prints its
# base URL, then one JSON line of every request received per "requests".
mkfifo "$work/to-broker" "$work/from-broker"
"$host_test" mock-broker <"$work/to-broker" >"$work/from-broker" 2>"$work/broker.err" &
broker_pid=$!
exec 3>"$work/to-broker" 4<"$work/from-broker"
read -r -t 30 url <&4 || fail "the mock broker printed no URL: $(cat "$work/broker.err")"
case "$url" in
http://127.0.0.1:*/*) ;;
*) fail "the mock broker's URL is not loopback http: $url" ;;
esac
base_path=/${url#http://*/}

# The bearer, in a directory of its own: the only thing the component is given.
# (wasmtime 48's --dir always preopens read-write; the file is at least 0400.)
bearer="vd_iat_$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
mkdir "$work/vd"
printf '%s\n' "$bearer" >"$work/vd/credential"
chmod 0400 "$work/vd/credential"

vault='get-token(["https://vault.azure.net/.default"])'
# `wasmtime run <flags...> <component>`: stdout in $out, stderr in $err.
run() {
    local component=${*: -1} rc=0
    set -- "${@:1:$#-1}"
    timeout 300 "$wasmtime" run "$@" \
        --dir "$work/vd::/run/vd" \
        --env "VD_CREDENTIAL_BROKER_URL=$url" \
        --env VD_CREDENTIAL_FILE=/run/vd/credential \
        --invoke "$vault" "$component" >"$work/out" 2>"$work/err" 3>&- 4<&- || rc=$?
    out=$(cat "$work/out")
    err=$(cat "$work/err")
    [ "$rc" -eq 0 ] || fail "wasmtime run $* ... $component exited $rc
stdout: $out
stderr: $err
(wasmtime built without component-model-async or wasi-http? install it with: $install_hint)"
}

# The broker's log must hold <count> requests, the last a mint of vault.
check_requests() {
    local count=$1 what=$2 log
    echo requests >&3
    read -r -t 30 log <&4 || fail "the mock broker did not answer 'requests': $(cat "$work/broker.err")"
    python3 - "$log" "$count" "$base_path/token" "Bearer $bearer" <<'EOF' || fail "$what: the broker's log: $log"
import json, sys
log, count, path, authorization = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
reqs = json.loads(log)
problems = []
if len(reqs) != count:
    problems.append(f"{len(reqs)} requests, {count} expected")
if count and reqs:
    r = reqs[-1]
    want = {"method": "POST", "path": path, "body": '{"audience":"vault"}'}
    problems += [f"{k} {r.get(k)!r}, {v!r} expected" for k, v in want.items() if r.get(k) != v]
    h = r.get("headers", {})
    if h.get("authorization") != authorization:
        problems.append("Authorization is not the bearer this script wrote")
    if h.get("content-type") != "application/json":
        problems.append(f"content-type {h.get('content-type')!r}")
for p in problems:
    print(f"wasmtime-cli: {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
}

# ok({token: "<token>", expires-on: <now + 3600>}) and nothing else.
check_token() {
    local want=$1 what=$2 before=$3 after=$4
    [[ $out =~ ^ok\(\{token:\ \"([^\"]*)\",\ expires-on:\ ([0-9]+)\}\)$ ]] ||
        fail "$what printed $out (stderr: $err), ok({token: \"$want\", expires-on: ...}) expected"
    [ "${BASH_REMATCH[1]}" = "$want" ] || fail "$what printed token ${BASH_REMATCH[1]}, the broker's is $want"
    local expires=${BASH_REMATCH[2]}
    ((expires >= before + 3600 && expires <= after + 3600)) ||
        fail "$what: expires-on $expires is not now + 3600 ($((before + 3600))..$((after + 3600)))"
}

# Codegen at opt-level 0: the CLI is a debug build and compiles the component
# on every run (no cache in this feature set); this cuts a few seconds a run
# (one get-token: about 9.5 s to 6 s on a 2 vCPU machine) and changes nothing
# the check looks at.
codegen=(-O opt-level=0)

# 1. The WASI 0.3 build.
before=$(date +%s)
run "${codegen[@]}" -S p3 -S http "$p3"
check_token mock-token-1 "the WASI 0.3 build" "$before" "$(date +%s)"
check_requests 1 "the WASI 0.3 build"
say "OK: WASI 0.3 build (async exports) under the stock CLI (-S p3 -S http): $out"
say "OK: the broker got one POST $base_path/token, body {\"audience\":\"vault\"}, with the bearer written"

# 2. The WASI 0.2 build, for comparison.
before=$(date +%s)
run "${codegen[@]}" -S http "$p2"
check_token mock-token-2 "the WASI 0.2 build" "$before" "$(date +%s)"
check_requests 2 "the WASI 0.2 build"
say "OK: WASI 0.2 build under the stock CLI (-S http): $out; one more POST, same bearer and body"

# 3. No bearer file: a typed error saying what to fix, and no request.
rm -f "$work/vd/credential"
run "${codegen[@]}" -S p3 -S http "$p3"
[[ $out == 'err(bearer-unavailable("'*'"))' ]] ||
    fail "with no bearer file the WASI 0.3 build printed $out (stderr: $err), err(bearer-unavailable(...)) expected"
for needle in '\"/run/vd/credential\"' VD_CREDENTIAL_FILE preopened; do
    [[ $out == *"$needle"* ]] || fail "the bearer-unavailable message does not mention $needle: $out"
done
check_requests 2 "with no bearer file"
say "OK: WASI 0.3 build with no bearer file: $out (CLI exit 0); nothing sent"
