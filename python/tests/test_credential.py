"""The credential from Python: the original's protocol, types and
environment, plus the cache, refresh, helper mode, threads and start-up."""

import json
import os
import subprocess
import sys
import threading
import time

import pytest
from azure.core.credentials import (
    AccessToken,
    AccessTokenInfo,
    SupportsTokenInfo,
    TokenCredential,
)
from azure.core.credentials_async import AsyncSupportsTokenInfo, AsyncTokenCredential

import vd_cred_broker
from vd_cred_broker import StudioAzureCredBroker
from vd_cred_broker import aio

VAULT = "https://vault.azure.net/.default"
POWERBI = "https://analysis.windows.net/powerbi/api/.default"


def test_get_token_returns_an_access_token_from_the_brokers_exact_request(env, broker, bearer):
    broker.token("tok-1", expires_in=3599)
    before = int(time.time())
    token = StudioAzureCredBroker().get_token(VAULT)
    assert type(token) is AccessToken
    assert token.token == "tok-1"
    assert before + 3599 <= token.expires_on <= int(time.time()) + 3599
    [r] = broker.requests()
    assert (r["method"], r["path"]) == ("POST", "/api/v1/credential-broker/token")
    assert r["headers"]["authorization"] == f"Bearer {bearer.value}"
    assert r["headers"]["content-type"] == "application/json"
    assert r["headers"]["content-length"] == "20"
    assert r["body"] == '{"audience":"vault"}'


@pytest.mark.parametrize("lane, revision", [("user", 3), ("service", 0)])
@pytest.mark.parametrize("scope", [VAULT, POWERBI, "https://storage.azure.com/"])
def test_the_broker_sees_what_the_original_sends(env, broker, bearer, scope, lane, revision):
    """Against the original 0.2.0 (which always speaks protocol 0.2), on one broker."""
    from vibedata_studio_azure_cred_broker import StudioAzureCredBroker as Original

    kwargs = {"lane": lane, "configuration_revision": revision}
    broker.token("from-original")
    broker.token("from-ours")
    assert Original(**kwargs).get_token(scope).token == "from-original"
    assert StudioAzureCredBroker(**kwargs).get_token(scope).token == "from-ours"
    original, ours = broker.requests()
    assert ours["path"] == original["path"]
    assert json.loads(ours["body"]) == json.loads(original["body"])
    assert list(json.loads(ours["body"])) == list(json.loads(original["body"])), "member order"
    for header in ("authorization", "content-type"):
        assert ours["headers"][header] == original["headers"][header], header
    # The original's JSON has spaces after separators; ours is compact. Both
    # send a Content-Length, never a chunked body.
    assert ours["headers"]["content-length"] == str(len(ours["body"]))
    assert "transfer-encoding" not in ours["headers"]


def test_it_satisfies_azure_cores_protocols():
    assert issubclass(StudioAzureCredBroker, TokenCredential)
    assert issubclass(StudioAzureCredBroker, SupportsTokenInfo)
    assert issubclass(aio.StudioAzureCredBroker, AsyncTokenCredential)
    assert issubclass(aio.StudioAzureCredBroker, AsyncSupportsTokenInfo)


def test_the_constructor_takes_the_originals_arguments_in_order(monkeypatch, broker, bearer, tmp_path):
    monkeypatch.setenv("VD_RUNTIME_ACCESS_SOCKET", str(tmp_path / "none"))
    for var in ("VD_CREDENTIAL_BROKER_URL", "VD_CREDENTIAL_FILE"):
        monkeypatch.delenv(var, raising=False)
    broker.token("positional")
    cred = StudioAzureCredBroker(
        broker.url, str(bearer.path), "user", 7, 2.5, {"https://vault.azure.net": "key_vault_data_plane"}
    )
    assert cred.get_token(VAULT).token == "positional"
    [r] = broker.requests()
    assert json.loads(r["body"]) == {
        "audience": "key_vault_data_plane",
        "scope": "secret_store",
        "lane": "user",
        "configurationRevision": 7,
    }


def test_get_token_info_carries_refresh_on(env, broker):
    broker.token("long", expires_in=7200)
    broker.token("hinted", expires_in=3600, refresh_in=600)
    cred = StudioAzureCredBroker(cache=False)
    info = cred.get_token_info(VAULT)
    assert type(info) is AccessTokenInfo
    assert (info.token, info.token_type) == ("long", "Bearer")
    assert info.refresh_on == info.expires_on - 3600, "half of a two-hour lifetime"
    info = cred.get_token_info(VAULT, options={"tenant_id": "t", "enable_cae": True})
    assert info.token == "hinted"
    assert info.refresh_on == info.expires_on - 3000


def test_tokens_are_cached_per_audience_unless_cache_is_off(env, broker):
    cred = StudioAzureCredBroker()
    first = cred.get_token(VAULT)
    assert cred.get_token("https://vault.azure.net") == first
    cred.get_token(POWERBI)
    assert len(broker.requests()) == 2, "one mint per audience"
    uncached = StudioAzureCredBroker(cache=False)
    uncached.get_token(VAULT)
    uncached.get_token(VAULT)
    assert len(broker.requests()) == 4, "the original's behaviour: a mint per call"


def test_a_rotated_bearer_mints_anew(env, broker, bearer):
    cred = StudioAzureCredBroker()
    cred.get_token(VAULT)
    bearer.write("vd_iat_rotated\n")
    cred.get_token(VAULT)
    first, second = broker.requests()
    assert first["headers"]["authorization"] == f"Bearer {bearer.value}"
    assert second["headers"]["authorization"] == "Bearer vd_iat_rotated"


@pytest.mark.parametrize("how", ["environment", "argument"])
@pytest.mark.parametrize("name", ["credential", "./credential"])
def test_a_relative_bearer_file_is_relative_to_the_working_directory(env, broker, bearer, how, name):
    env.chdir(bearer.path.parent)
    if how == "environment":
        env.setenv("VD_CREDENTIAL_FILE", name)
        cred = StudioAzureCredBroker()
    else:
        env.delenv("VD_CREDENTIAL_FILE")
        cred = StudioAzureCredBroker(credential_file=name)
    cred.get_token(VAULT)
    [r] = broker.requests()
    assert r["headers"]["authorization"] == f"Bearer {bearer.value}"


def test_close_and_the_context_manager(env, broker):
    with StudioAzureCredBroker() as cred:
        cred.get_token(VAULT)
    with pytest.raises(vd_cred_broker.ConfigurationError, match="closed"):
        cred.get_token(VAULT)
    cred.close()  # twice is harmless


def test_helper_mode_mints_over_the_socket_without_a_bearer(helper):
    helper.token("from-helper")
    cred = StudioAzureCredBroker()
    assert cred.mode == "helper"
    assert cred.get_token(VAULT).token == "from-helper"
    [r] = helper.requests()
    assert (r["method"], r["path"]) == ("POST", "/v1/credentials")
    assert "authorization" not in r["headers"]
    assert r["body"] == '{"scope":"data_platform","audience":"vault"}'


def test_threads_share_one_credential_and_one_mint(env, broker):
    broker.reply(200, json.dumps({"access_token": "shared", "expires_in": 3600}), delay_ms=300)
    cred = StudioAzureCredBroker()
    results, errors = [], []

    def call():
        try:
            results.append(cred.get_token(VAULT).token)
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results == ["shared"] * 16
    assert len(broker.requests()) == 1, "concurrent callers for one audience cause one mint"


START = """
import sys, time
from vd_cred_broker import StudioAzureCredBroker, preload
cached = preload()
print("cached" if cached else "compiled")
print(StudioAzureCredBroker().get_token(sys.argv[1]).token)
"""


def test_a_new_process_reuses_the_compiled_component_and_survives_an_unusable_cache(env, broker, tmp_path):
    def run(cache_dir):
        environ = dict(os.environ, VD_CRED_BROKER_CACHE_DIR=str(cache_dir))
        out = subprocess.run(
            [sys.executable, "-c", START, VAULT], env=environ, capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    cache = tmp_path / "cache"
    assert run(cache) == ["compiled", "mock-token-1"]
    assert [p.suffix for p in cache.iterdir()] == [".cwasm"]
    assert run(cache) == ["cached", "mock-token-2"]
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert run(blocked / "cache") == ["compiled", "mock-token-3"], "an unusable cache only costs a compile"


def test_an_https_broker_with_a_private_ca_is_trusted_through_ssl_cert_file(env, bearer, tmp_path):
    """No CA variable is set (``env`` clears the machine's) until the test sets one."""
    from tls_server import TlsServer

    def mint(method, path, headers):
        assert (method, path) == ("POST", "/api/v1/credential-broker/token")
        body = json.dumps({"access_token": "tls-token", "expires_in": 3600}).encode()
        return 200, [("Content-Type", "application/json")], body

    server = TlsServer(tmp_path, mint)
    try:
        env.setenv("VD_CREDENTIAL_BROKER_URL", f"{server.url}/api/v1/credential-broker")
        with pytest.raises(vd_cred_broker.BrokerUnreachableError) as e:
            StudioAzureCredBroker().get_token(VAULT)
        assert "TLS handshake failed: the broker's certificate is not trusted" in str(e.value)
        assert server.requests == []

        env.setenv("SSL_CERT_FILE", server.ca_path)
        assert StudioAzureCredBroker().get_token(VAULT).token == "tls-token"
        [(method, path, authorization)] = server.requests
        assert authorization == f"Bearer {bearer.value}"
        # What a user of the original (requests) has set works too.
        env.delenv("SSL_CERT_FILE")
        env.setenv("REQUESTS_CA_BUNDLE", server.ca_path)
        assert StudioAzureCredBroker().get_token(VAULT).token == "tls-token"
        env.delenv("REQUESTS_CA_BUNDLE")

        # A file that holds no certificate is read, and refused, when the
        # first https request needs it (as requests reads REQUESTS_CA_BUNDLE),
        # not when the credential is made; nothing is sent.
        env.setenv("SSL_CERT_FILE", str(bearer.path))
        credential = StudioAzureCredBroker()
        with pytest.raises(vd_cred_broker.BrokerUnreachableError) as e:
            credential.get_token(VAULT)
        assert f"SSL_CERT_FILE names {bearer.path}, which does not hold usable CA certificates" in str(e.value)
        assert bearer.value not in str(e.value)
        assert len(server.requests) == 2
    finally:
        server.close()
