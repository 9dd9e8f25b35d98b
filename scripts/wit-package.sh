#!/usr/bin/env bash
# The WIT package `vibedata:cred-broker` through a registry and back, offline,
# with wkg 0.16 (https://github.com/bytecodealliance/wasm-pkg-tools):
#
#   1. `wkg build` encodes wit/ (with wkg.toml's metadata) as a wasm WIT
#      package, in a copy of wkg.toml, wkg.lock and wit/ (nothing is written
#      into the checkout); the committed wkg.lock must come out unchanged.
#   2. `wkg publish` puts it in a registry in a temp dir: wasm-pkg's `local`
#      backend, `<root>/<namespace>/<name>/<version>.wasm`, named in a config
#      file this script writes (WKG_CONFIG_FILE; the user's
#      ~/.config/wasm-pkg is not read, the cache is a temp dir too).
#   3. A throwaway consumer, package `example:agent`, whose world imports
#      `vibedata:cred-broker/token-credential@<version>`, runs `wkg fetch`.
#   4. The fetched package must be the published one: its WIT text encodes to
#      the same bytes, is the text of wit/world.wit (indentation aside), keeps
#      the contract's declarations, and the consumer builds against it; the
#      wasm form fetched is byte-identical.
#   5. The registry's semver gate: the same contract with a case added to
#      `credential-error` at the next patch version is refused (see the
#      version policy in docs/packaging.md).
#
# Only the `vibedata` namespace is mapped, to the local registry; the package
# refers to no other (no WASI), so no step has anything to look up on the
# network, and a dead proxy makes any attempt fail instead of leaving the box.
# Exits non-zero with a message naming what differs.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'wit-package: %s\n' "$*"; }
fail() {
    printf 'wit-package: FAIL: %s\n' "$*" >&2
    exit 1
}

install_hint="cargo install --locked wkg --version '~0.16'"
command -v wkg >/dev/null 2>&1 || fail "wkg is not on PATH; install it with: $install_hint"
wkg_version=$(wkg --version 2>/dev/null | awk '{print $2}')
case "$wkg_version" in
0.16.*) ;;
*) fail "wkg ${wkg_version:-(unknown version)} found, 0.16.x expected (config and commands differ); install it with: $install_hint" ;;
esac

version=$(sed -n 's/^package vibedata:cred-broker@\([^;[:space:]]*\);.*/\1/p' wit/world.wit)
[ -n "$version" ] || fail "wit/world.wit has no 'package vibedata:cred-broker@<version>;' line"
say "wkg $wkg_version, package vibedata:cred-broker@$version"

work=$(mktemp -d "${TMPDIR:-/tmp}/wit-package.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Isolation: our config and cache only, no registry override, no network.
export WKG_CONFIG_FILE="$work/config.toml" WKG_CACHE_DIR="$work/cache"
unset WKG_REGISTRY WKG_PACKAGE
for v in HTTP_PROXY HTTPS_PROXY ALL_PROXY http_proxy https_proxy all_proxy; do
    export "$v=http://127.0.0.1:9"
done
unset NO_PROXY no_proxy
export NO_COLOR=1 RUST_BACKTRACE=0

registry="$work/registry"
cat >"$WKG_CONFIG_FILE" <<EOF
# Only vibedata:* resolves, to a local-backend registry (a directory).
[namespace_registries]
vibedata = "vibedata.local"

[registry."vibedata.local"]
type = "local"

[registry."vibedata.local".local]
root = "$registry"
EOF

# 1. Build, in a copy.
src="$work/src"
mkdir "$src"
cp -R wit wkg.toml "$src/"
[ -f wkg.lock ] && cp wkg.lock "$src/"
built="$work/cred-broker.wasm"
(cd "$src" && wkg build --wit-dir wit --output "$built") >"$work/build.log" 2>&1 ||
    { cat "$work/build.log" >&2; fail "wkg build failed for wit/"; }
[ -f wkg.lock ] || fail "wkg.lock is missing: run 'wkg build' at the repository root and commit wkg.lock"
cmp -s wkg.lock "$src/wkg.lock" ||
    fail "wkg.lock is stale (wkg build changes it): run 'wkg build' at the repository root and commit wkg.lock"
digest="sha256:$(sha256sum "$built" | awk '{print $1}')"
say "built   vibedata:cred-broker@$version ($(wc -c <"$built") bytes, $digest)"

# 2. Publish.
wkg publish "$built" >"$work/publish.log" 2>&1 ||
    { cat "$work/publish.log" >&2; fail "wkg publish to the local registry failed"; }
stored="$registry/vibedata/cred-broker/$version.wasm"
[ -f "$stored" ] || fail "wkg publish stored no $stored (registry holds: $(cd "$registry" && find . -type f | tr '\n' ' '))"
cmp -s "$built" "$stored" || fail "the registry's $version.wasm differs from the package built"
say "published to the local registry (${stored#"$work"/})"

# 3. A consumer, and 4. its fetch.
consumer="$work/consumer"
mkdir -p "$consumer/wit"
cat >"$consumer/wit/world.wit" <<EOF
package example:agent@0.1.0;

world agent {
    import vibedata:cred-broker/token-credential@$version;
}
EOF
(cd "$consumer" && wkg fetch) >"$work/fetch.log" 2>&1 ||
    { cat "$work/fetch.log" >&2; fail "wkg fetch in the consumer failed"; }
fetched="$consumer/wit/deps/vibedata-cred-broker-$version/package.wit"
[ -f "$fetched" ] || fail "the consumer's wit/deps has no vibedata-cred-broker-$version/package.wit (it holds: $(cd "$consumer/wit" && find deps -type f 2>/dev/null | tr '\n' ' '))"
grep -q "^digest = \"$digest\"" "$consumer/wkg.lock" ||
    fail "the consumer's wkg.lock does not pin $digest: $(grep digest "$consumer/wkg.lock" || echo 'no digest')"
say "fetched into the consumer's wit/deps, locked at the published digest"

# The fetched text encodes to exactly the published package (same wkg.toml metadata).
reenc="$work/reencode"
mkdir -p "$reenc/wit"
cp "$fetched" "$reenc/wit/"
cp wkg.toml "$reenc/"
(cd "$reenc" && wkg build --output "$work/reencoded.wasm") >"$work/reencode.log" 2>&1 ||
    { cat "$work/reencode.log" >&2; fail "the fetched package.wit does not build on its own"; }
cmp -s "$built" "$work/reencoded.wasm" ||
    fail "the fetched WIT encodes to a different package than the one published"

# ... and is wit/world.wit's text, indentation and blank lines aside (when
# world.wit is the package's only file).
norm() { sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' "$1" | grep -v '^$'; }
if [ "$(find wit -maxdepth 1 -name '*.wit' | wc -l)" -eq 1 ]; then
    if ! diff -u <(norm wit/world.wit) <(norm "$fetched") >"$work/text.diff"; then
        head -40 "$work/text.diff" >&2
        fail "the fetched WIT text differs from wit/world.wit (diff above: - source, + fetched)"
    fi
fi

# ... and keeps the contract's declarations.
for decl in \
    "package vibedata:cred-broker@$version;" \
    'interface token-credential {' \
    'record access-token {' \
    'variant credential-error {' \
    'scope-not-allowed(scope-not-allowed),' \
    'resource credential {' \
    'open: static func(options: credential-options) -> result<credential, credential-error>;' \
    'get-token: func(scopes: list<string>) -> result<access-token, credential-error>;' \
    'describe-error: func(error: credential-error) -> string;' \
    'world cred-broker {' \
    'world credential-user {'; do
    grep -qF -- "$decl" "$fetched" || fail "the fetched package lacks: $decl"
done
say "fetched WIT is the published package, the text of wit/world.wit, with its declarations"

# The consumer builds against what it fetched.
(cd "$consumer" && wkg build --output "$work/agent.wasm") >"$work/agent.log" 2>&1 ||
    { cat "$work/agent.log" >&2; fail "the consumer example:agent does not build against the fetched package"; }

# The wasm form, fetched afresh, is byte-identical.
consumer2="$work/consumer-wasm"
mkdir -p "$consumer2"
cp -R "$consumer/wit" "$consumer2/"
rm -rf "$consumer2/wit/deps"
(cd "$consumer2" && wkg fetch --type wasm) >"$work/fetch-wasm.log" 2>&1 ||
    { cat "$work/fetch-wasm.log" >&2; fail "wkg fetch --type wasm in the consumer failed"; }
cmp -s "$built" "$consumer2/wit/deps/vibedata-cred-broker-$version.wasm" ||
    fail "the fetched wasm package differs from the one published"
say "consumer example:agent builds against it; the wasm form fetched is byte-identical"

# 5. The semver gate: a case added to credential-error is not a patch.
IFS=. read -r major minor patch <<<"${version%%[-+]*}"
next="$major.$minor.$((patch + 1))"
bad="$work/incompatible"
mkdir -p "$bad/wit"
sed -e "s/^package vibedata:cred-broker@$version;/package vibedata:cred-broker@$next;/" \
    -e 's/^\([[:space:]]*\)variant credential-error {/&\n\1    added-in-a-patch(string),/' \
    wit/world.wit >"$bad/wit/world.wit"
grep -q 'added-in-a-patch' "$bad/wit/world.wit" || fail "could not derive the incompatible variant of wit/world.wit"
(cd "$bad" && wkg build --output "$work/incompatible.wasm") >"$work/incompatible.log" 2>&1 ||
    { cat "$work/incompatible.log" >&2; fail "the incompatible variant does not build"; }
if wkg publish --dry-run "$work/incompatible.wasm" >"$work/gate.log" 2>&1; then
    fail "the registry accepted $next with a case added to credential-error; it must refuse it"
fi
grep -q 'not semver-compatible' "$work/gate.log" ||
    { cat "$work/gate.log" >&2; fail "publishing $next failed, but not for semver"; }
say "registry refuses $next with a case added to credential-error (not semver-compatible)"
say "OK: vibedata:cred-broker@$version built, published, fetched and matched"
