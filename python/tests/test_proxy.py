"""Proxies, differentially against the original 0.2.0 (which sends with
``requests``): with the same environment, both credentials send the same
requests through the same loopback proxy (tunnels and forwards, to the same
targets, with the same ``Proxy-Authorization``), or both go directly. The
proxy alone resolves ``broker.invalid``: sent directly, both fail to resolve
it. The machine's proxy and CA variables are kept out (conftest's
``machine_kept_out``); each case sets its own."""

import base64
import os
import re
from pathlib import Path

import pytest
from requests.utils import get_environ_proxies

from proxy_server import ProxyServer
from tls_server import token_broker
from vd_cred_broker import StudioAzureCredBroker

VAULT = "https://vault.azure.net/.default"
NAME = "broker.invalid"
REPO = Path(__file__).resolve().parents[2]


# What each says when the name does not resolve (requests' own words, in the
# cause the original chains; ours in its message). A refused connection says
# neither.
ORIGINAL_UNRESOLVED = "Caused by NameResolutionError"
OURS_UNRESOLVED = "{url}/token failed: the broker's host name did not resolve"


@pytest.fixture
def clean_env(env):
    """The broker-mode environment without any proxy variable (``env`` clears
    the machine's usual ones; requests reads any ``*_proxy``)."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            env.delenv(name)
    env.setenv("VD_CREDENTIAL_LANE", "user")
    env.setenv("VD_CREDENTIAL_CONFIGURATION_REVISION", "1")
    return env


def run_both(proxy):
    """Mint with the original, then with ours, each against a fresh proxy
    log: (outcome, proxy entries, Proxy-Authorization values) for each."""
    from vibedata_studio_azure_cred_broker import StudioAzureCredBroker as Original

    results = []
    for make in (lambda: Original(timeout=3),
                 lambda: StudioAzureCredBroker(timeout=3, cache=False, allow_insecure_http=True)):
        proxy.reset()
        try:
            make().get_token(VAULT)
            outcome = "ok"
        except Exception as e:  # both raise RuntimeError subclasses or requests' errors
            outcome = f"error ({type(e).__name__}: {e}; cause: {e.__cause__ or e.__context__})"
        results.append((outcome, proxy.entries(), set(proxy.authorizations())))
    return results


# (case, broker, environment ({proxy} is the proxy's URL, {proxy_hostport}
# it without a scheme, {port} the broker's), expected: "forward", "tunnel"
# or None for a direct connection)
CASES = [
    ("HTTP_PROXY", "loopback", {"HTTP_PROXY": "{proxy}"}, "forward"),
    ("http_proxy", "loopback", {"http_proxy": "{proxy}"}, "forward"),
    ("ALL_PROXY", "loopback", {"ALL_PROXY": "{proxy}"}, "forward"),
    ("all_proxy-lower", "loopback", {"all_proxy": "{proxy}"}, "forward"),
    ("no-scheme", "loopback", {"HTTP_PROXY": "{proxy_hostport}"}, "forward"),
    ("HTTPS_PROXY-only", "loopback", {"HTTPS_PROXY": "{proxy}"}, None),
    ("NO_PROXY-ip", "loopback", {"HTTP_PROXY": "{proxy}", "NO_PROXY": "127.0.0.1"}, None),
    ("NO_PROXY-cidr", "loopback", {"HTTP_PROXY": "{proxy}", "NO_PROXY": "10.0.0.0/8, 127.0.0.0/8"}, None),
    ("NO_PROXY-ip-port", "loopback", {"HTTP_PROXY": "{proxy}", "NO_PROXY": "127.0.0.1:{port}"}, "forward"),
    ("NO_PROXY-localhost", "loopback", {"HTTP_PROXY": "{proxy}", "NO_PROXY": "localhost"}, "forward"),
    ("NO_PROXY-suffix-quirk", "loopback", {"HTTP_PROXY": "{proxy}", "NO_PROXY": "0.0.1"}, None),
    ("no_proxy-empty", "loopback", {"HTTP_PROXY": "{proxy}", "no_proxy": "", "NO_PROXY": "127.0.0.1"}, None),
    ("empty-lower-wins", "loopback", {"HTTP_PROXY": "{proxy}", "http_proxy": ""}, None),
    ("cgi", "loopback", {"HTTP_PROXY": "{proxy}", "REQUEST_METHOD": "GET"}, None),
    ("cgi-lower", "loopback", {"http_proxy": "{proxy}", "REQUEST_METHOD": "GET"}, "forward"),
    ("invalid-http", "invalid-http", {"HTTP_PROXY": "{proxy}"}, "forward"),
    ("invalid-https", "invalid-https", {"HTTPS_PROXY": "{proxy}"}, "tunnel"),
    ("invalid-https-all", "invalid-https", {"ALL_PROXY": "{proxy}", "HTTP_PROXY": "http://127.0.0.1:9"}, "tunnel"),
    ("invalid-https-port", "invalid-https", {"https_proxy": "{proxy}", "NO_PROXY": "broker.invalid:{port}"}, None),
    ("invalid-https-other-port", "invalid-https", {"https_proxy": "{proxy}", "NO_PROXY": "broker.invalid:1"}, "tunnel"),
    ("invalid-https-suffix", "invalid-https", {"HTTPS_PROXY": "{proxy}", "NO_PROXY": ".INVALID"}, None),
    ("invalid-https-star", "invalid-https", {"HTTPS_PROXY": "{proxy}", "no_proxy": "*"}, None),
    ("invalid-https-star-in-list", "invalid-https", {"HTTPS_PROXY": "{proxy}", "NO_PROXY": "*,other"}, "tunnel"),
]


@pytest.mark.parametrize("case, kind, variables, expected", CASES, ids=[c[0] for c in CASES])
def test_the_same_requests_go_through_the_proxy_as_with_the_original(
    clean_env, broker, tmp_path, case, kind, variables, expected
):
    tls = token_broker(tmp_path, [NAME]) if kind == "invalid-https" else None
    try:
        if kind == "loopback":
            url, port = broker.url, int(broker.url.split(":")[2].split("/")[0])
            proxy = ProxyServer()
        else:
            port = tls.port if tls else int(broker.url.split(":")[2].split("/")[0])
            url = tls.url_for(NAME) if tls else f"http://{NAME}:{port}/api/v1/credential-broker"
            proxy = ProxyServer({NAME: ("127.0.0.1", port)})
        if tls:
            clean_env.setenv("REQUESTS_CA_BUNDLE", tls.ca_path)
        clean_env.setenv("VD_CREDENTIAL_BROKER_URL", url)
        for name, value in variables.items():
            clean_env.setenv(name, value.format(proxy=proxy.url, proxy_hostport=proxy.url[7:], port=port))
        original, ours = run_both(proxy)
        assert ours[:2] == original[:2] or (
            ours[0].startswith("error") and original[0].startswith("error") and ours[1] == original[1]
        ), f"original {original}, ours {ours}"
        target = url.split("://")[1].split("/")[0]
        want = {
            "forward": [("POST", f"{url}/token")],
            "tunnel": [("CONNECT", target)],
            None: [],
        }[expected]
        assert original[1] == want, original
        # Direct to broker.invalid fails for both, at resolving it: only the
        # proxy resolves it.
        assert original[0].startswith("ok") == (expected is not None or kind == "loopback"), original
        if expected is None and kind != "loopback":
            assert ORIGINAL_UNRESOLVED in original[0] and f"Failed to resolve '{NAME}'" in original[0], original
            assert OURS_UNRESOLVED.format(url=url) in ours[0], ours
        proxy.close()
    finally:
        if tls:
            tls.close()


@pytest.mark.parametrize("password", ["p@ss word", "plain"])
def test_proxy_credentials_are_sent_as_the_original_sends_them(clean_env, tmp_path, password):
    tls = token_broker(tmp_path, [NAME])
    try:
        wanted = "Basic " + base64.b64encode(f"agent:{password}".encode()).decode()
        proxy = ProxyServer({NAME: ("127.0.0.1", tls.port)}, required_auth=wanted)
        quoted = password.replace("@", "%40").replace(" ", "%20")
        clean_env.setenv("REQUESTS_CA_BUNDLE", tls.ca_path)
        clean_env.setenv("VD_CREDENTIAL_BROKER_URL", tls.url_for(NAME))
        clean_env.setenv("HTTPS_PROXY", f"http://agent:{quoted}@127.0.0.1:{proxy.port}")
        original, ours = run_both(proxy)
        assert original == ours == ("ok", [("CONNECT", f"{NAME}:{tls.port}")], {wanted})

        # Wrong credentials: both fail; ours says why without the password.
        clean_env.setenv("HTTPS_PROXY", f"http://agent:wrong-{quoted}@127.0.0.1:{proxy.port}")
        original, ours = run_both(proxy)
        assert original[0].startswith("error") and ours[0].startswith("error"), (original, ours)
        assert "407" in ours[0] and "check the proxy credentials in HTTPS_PROXY" in ours[0], ours
        assert "wrong-" not in ours[0] and password not in ours[0], ours
        proxy.close()
    finally:
        tls.close()


def test_the_rust_no_proxy_table_is_what_requests_decides(monkeypatch):
    """host/src/outbound/proxy.rs's NO_PROXY table (also run by `cargo test`),
    checked against requests 2.34 itself."""
    source = (REPO / "host" / "src" / "outbound" / "proxy.rs").read_text()
    table = source.split("NO_PROXY_TABLE")[1].split("];")[0]
    rows = re.findall(r'\(\s*"((?:[^"\\]|\\.)*)",\s*"([^"]*)",\s*(true|false),?\s*\)', table)
    assert len(rows) > 20
    for name in list(os.environ):
        if name.lower().endswith("_proxy") or name == "REQUEST_METHOD":
            monkeypatch.delenv(name)
    monkeypatch.setenv("HTTP_PROXY", "http://p:1")
    monkeypatch.setenv("HTTPS_PROXY", "http://p:1")
    for no_proxy, url, bypassed in rows:
        monkeypatch.setenv("NO_PROXY", no_proxy)
        assert (get_environ_proxies(url) == {}) == (bypassed == "true"), (no_proxy, url)
