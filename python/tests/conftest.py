"""Fixtures: the Rust mock broker (``host-test mock-broker``, a real HTTP/1.1
server that records every request), a mock runtime-access helper on a Unix
socket (the same binary), a bearer file, and an environment pointing at them.

Every test runs without the machine's proxy and CA settings and with the
session's own precompiled-component cache (``machine_kept_out``).
"""

import functools
import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Variables through which the machine would reach into a test: its proxies
# (both cases: requests and the credential read either) and its CA trust.
MACHINE_VARIABLES = tuple(
    name
    for base in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
    for name in (base, base.lower())
) + ("REQUEST_METHOD", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


@functools.cache
def cargo_target_dir() -> str:
    """Cargo's target directory as cargo reports it (``CARGO_TARGET_DIR`` or
    ``build.target-dir`` may put it anywhere, not only ``<repo>/target``)."""
    try:
        out = subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--no-deps"],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.exit(f"cannot ask cargo for its target directory ({e}): set VD_HOST_TEST_BIN", returncode=2)
    if out.returncode != 0:
        pytest.exit(
            f"`cargo metadata` failed in {REPO}: {out.stderr.strip()}; set VD_HOST_TEST_BIN", returncode=2
        )
    return json.loads(out.stdout)["target_directory"]


@functools.cache
def host_test_bin() -> str:
    path = os.environ.get("VD_HOST_TEST_BIN") or os.path.join(cargo_target_dir(), "debug", "host-test")
    if not os.path.exists(path):
        pytest.exit(
            f"the mock broker binary {path} does not exist: build it with `cargo build -p host-test` "
            "(scripts/test.sh does), or set VD_HOST_TEST_BIN to a built one",
            returncode=2,
        )
    return path


@pytest.fixture(scope="session")
def precompiled_cache(tmp_path_factory):
    """The session's precompiled-component cache: the caller's
    ``VD_CRED_BROKER_CACHE_DIR`` (scripts/test.sh sets one under cargo's
    target directory), else one under pytest's tmp, shared by every test so
    the component is compiled once per session and never read from or
    written to the user's ``~/.cache``."""
    return os.environ.get("VD_CRED_BROKER_CACHE_DIR") or str(tmp_path_factory.mktemp("precompiled"))


@pytest.fixture(autouse=True)
def machine_kept_out(monkeypatch, precompiled_cache):
    """Neither the tests nor the credential (nor the original and azure-core
    beside it) see the machine's proxy or CA variables; a test that wants one
    sets it itself. (``REQUEST_METHOD`` too: it turns requests' ``HTTP_PROXY``
    off.) The cache directory is the session's."""
    for var in MACHINE_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("VD_CRED_BROKER_CACHE_DIR", precompiled_cache)
    return monkeypatch


@pytest.fixture
def refused_port():
    """A loopback port this test holds, bound and not listening: a connection
    to it is refused (on Linux), and nothing else can take it meanwhile."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


class MockBroker:
    """``host-test mock-broker``, driven over its stdin."""

    def __init__(self, unix_socket=None):
        args = [host_test_bin(), "mock-broker"]
        if unix_socket is not None:
            args += ["--unix", str(unix_socket)]
        self.proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self.url = self.proc.stdout.readline().strip()
        self.socket = unix_socket

    def _send(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def reply(self, status=200, body="", headers=(), delay_ms=0, drop=False):
        """Script the next answer; returns once the broker has it."""
        spec = {"status": status, "body": body, "headers": [list(h) for h in headers],
                "delay_ms": delay_ms, "drop": drop}
        self._send("reply " + json.dumps(spec))
        self.requests()
        return self

    def token(self, token, expires_in=3600, **extra):
        return self.reply(200, json.dumps({"access_token": token, "expires_in": expires_in, **extra}))

    def named(self, delay_ms=0):
        """Answer every unscripted request with ``mock-<audience>-<n>`` (n counts requests)."""
        self._send("default " + json.dumps({"named": True, "delay_ms": delay_ms}))
        self.requests()

    def minted(self):
        """The token ``named`` answered each request so far, in order."""
        return [f"mock-{json.loads(r['body'])['audience']}-{n}" for n, r in enumerate(self.requests(), 1)]

    def default(self, status=200, body="", delay_ms=0):
        self._send("default " + json.dumps({"status": status, "body": body, "delay_ms": delay_ms}))
        self.requests()

    def requests(self):
        """Every request received so far: method, path, headers (lower-case), body."""
        self._send("requests")
        return json.loads(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


@pytest.fixture
def broker():
    b = MockBroker()
    yield b
    b.close()


@pytest.fixture
def bearer(tmp_path):
    """A bearer file; ``bearer.write(text)`` rotates it."""

    class Bearer:
        path = tmp_path / "vd" / "credential"
        value = "vd_iat_" + os.urandom(12).hex()

        def write(self, text):
            self.path.write_text(text)

    b = Bearer()
    b.path.parent.mkdir()
    b.write(b.value + "\n")
    return b


@pytest.fixture
def env(machine_kept_out, monkeypatch, broker, bearer, tmp_path):
    """Broker mode from the environment, as Studio sets it; no helper socket;
    no proxy or CA variable from the machine (``machine_kept_out``)."""
    for var in ("VD_CREDENTIAL_LANE", "VD_CREDENTIAL_CONFIGURATION_REVISION"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("VD_CREDENTIAL_BROKER_URL", broker.url)
    monkeypatch.setenv("VD_CREDENTIAL_FILE", str(bearer.path))
    monkeypatch.setenv("VD_RUNTIME_ACCESS_SOCKET", str(tmp_path / "no-helper.sock"))
    return monkeypatch


@pytest.fixture
def holding(env, bearer):
    """A broker that holds chosen audiences' answers until released
    (``holding_broker.HoldingBroker``), in the environment instead of ``broker``."""
    from holding_broker import HoldingBroker

    b = HoldingBroker()
    env.setenv("VD_CREDENTIAL_BROKER_URL", b.url)
    yield b
    b.close()


@pytest.fixture
def helper(monkeypatch, tmp_path):
    """A mock runtime-access helper on a Unix socket, and no broker settings."""
    sock = tmp_path / "program.sock"
    h = MockBroker(unix_socket=sock)
    for var in ("VD_CREDENTIAL_BROKER_URL", "VD_CREDENTIAL_FILE", "VD_CREDENTIAL_LANE",
                "VD_CREDENTIAL_CONFIGURATION_REVISION"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("VD_RUNTIME_ACCESS_SOCKET", str(sock))
    yield h
    h.close()


def token_body(token, expires_in=3600, **extra):
    return json.dumps({"access_token": token, "expires_in": expires_in, **extra})
