"""The released consumers, pinned (python/requirements-test.txt), with the
credential loaded the way their users configure it: dbt-fabricspark, dlt,
Key Vault's SecretClient (sync and async), and azure-core pipelines with the
bearer-token policies."""

import asyncio
import json
import time

import pytest
from azure.core import AsyncPipelineClient, PipelineClient
from azure.core.pipeline.policies import (
    AsyncBearerTokenCredentialPolicy,
    BearerTokenCredentialPolicy,
)
from azure.core.rest import HttpRequest

from tls_server import key_vault, protected_resource
from vd_cred_broker import StudioAzureCredBroker
from vd_cred_broker import aio

POWERBI = "https://analysis.windows.net/powerbi/api/.default"
STORAGE = "https://storage.azure.com/.default"


def audiences(broker):
    return [json.loads(r["body"])["audience"] for r in broker.requests()]


@pytest.fixture
def dbt_livy():
    """dbt-fabricspark keeps one token and credential cache per process: reset them."""
    from dbt.adapters.fabricspark import livysession

    def reset():
        livysession.accessToken = None
        livysession._custom_credential_cache.clear()

    reset()
    yield livysession
    reset()


def fabric_profile(**extra):
    return {
        "method": "livy",
        "authentication": "token_credential",
        "credential_class": "vd_cred_broker.StudioAzureCredBroker",
        "endpoint": "https://api.fabric.microsoft.com/v1",
        "workspaceid": "11111111-1111-1111-1111-111111111111",
        "lakehouseid": "22222222-2222-2222-2222-222222222222",
        "lakehouse": "lakehouse",
        "schema": "lakehouse",
        "spark_config": {"name": "vd-tests"},
        **extra,
    }


def test_dbt_fabricspark_sends_the_minted_power_bi_token(env, broker, dbt_livy):
    from dbt.adapters.fabricspark.credentials import FabricSparkCredentials

    broker.token("powerbi-token", expires_in=3600)
    credentials = FabricSparkCredentials.from_dict(fabric_profile())
    headers = dbt_livy.get_headers(credentials)
    assert headers["Authorization"] == "Bearer powerbi-token"
    assert dbt_livy.get_headers(credentials)["Authorization"] == "Bearer powerbi-token"
    assert audiences(broker) == ["fabric_cli"], "one mint, the Power BI scope's audience"


def test_dbt_fabricspark_refreshes_a_token_under_five_minutes_from_expiry(env, broker, dbt_livy):
    from dbt.adapters.fabricspark.credentials import FabricSparkCredentials

    broker.token("short-lived", expires_in=240)
    broker.token("fresh", expires_in=3600)
    credentials = FabricSparkCredentials.from_dict(fabric_profile())
    assert dbt_livy.get_headers(credentials)["Authorization"] == "Bearer short-lived"
    # 240 s left: dbt asks again, and the credential (whose cache also wants
    # more than 300 s) mints anew rather than serving the old token.
    assert dbt_livy.get_headers(credentials)["Authorization"] == "Bearer fresh"
    assert dbt_livy.get_headers(credentials)["Authorization"] == "Bearer fresh"
    assert audiences(broker) == ["fabric_cli", "fabric_cli"]


def test_dbt_fabricspark_passes_credential_kwargs(env, broker, dbt_livy):
    from dbt.adapters.fabricspark.credentials import FabricSparkCredentials

    profile = fabric_profile(credential_kwargs={"lane": "service", "configuration_revision": 4})
    dbt_livy.get_headers(FabricSparkCredentials.from_dict(profile))
    [r] = broker.requests()
    assert json.loads(r["body"]) == {
        "audience": "fabric_cli", "scope": "data_platform", "lane": "service", "configurationRevision": 4,
    }


def test_dlt_object_store_credentials_carry_the_storage_token(env, broker):
    from dlt.common.configuration.specs import AzureCredentials

    broker.token("storage-token")
    credentials = AzureCredentials.from_credential(StudioAzureCredBroker())
    credentials.azure_storage_account_name = "onelake"
    credentials.azure_account_host = "onelake.dfs.fabric.microsoft.com"
    rs = credentials.to_object_store_rs_credentials()
    assert rs["azure_storage_token"] == "storage-token"
    assert rs["account_name"] == "onelake"
    # dlt asks again for every object store; the credential's cache answers.
    assert credentials.to_object_store_rs_credentials()["azure_storage_token"] == "storage-token"
    assert audiences(broker) == ["storage"]


@pytest.fixture
def challenge_cache():
    from azure.keyvault.secrets._shared import http_challenge_cache

    http_challenge_cache.clear()
    yield
    http_challenge_cache.clear()


def test_key_vault_secret_client_reads_a_secret_with_the_minted_token(env, broker, tmp_path, challenge_cache):
    from azure.keyvault.secrets import SecretClient

    broker.token("vault-token")
    vault = key_vault(tmp_path, accepted_tokens={"vault-token"})
    try:
        client = SecretClient(
            vault.url, StudioAzureCredBroker(),
            verify_challenge_resource=False, connection_verify=vault.ca_path, retry_total=0,
        )
        assert client.get_secret("db-password").value == "secret-value-of-db-password"
        assert client.get_secret("other").value == "secret-value-of-other"
    finally:
        vault.close()
    assert [auth for _, _, auth in vault.requests] == [None, "Bearer vault-token", "Bearer vault-token"]
    assert audiences(broker) == ["vault"]


@pytest.mark.asyncio
async def test_the_async_secret_client_with_the_async_credential(env, broker, tmp_path, challenge_cache):
    from azure.keyvault.secrets.aio import SecretClient

    broker.token("async-vault-token")
    vault = key_vault(tmp_path, accepted_tokens={"async-vault-token"})
    try:
        async with aio.StudioAzureCredBroker() as credential:
            async with SecretClient(
                vault.url, credential,
                verify_challenge_resource=False, connection_verify=vault.ca_path, retry_total=0,
            ) as client:
                secret = await client.get_secret("db-password")
        assert secret.value == "secret-value-of-db-password"
    finally:
        vault.close()
    assert audiences(broker) == ["vault"]


@pytest.fixture
def no_jitter(monkeypatch):
    """azure-core delays a refresh by up to 60 s of random jitter; none here."""
    import random

    monkeypatch.setattr(random, "randint", lambda a, b: 0)


@pytest.fixture
def policy_clock(monkeypatch):
    """azure-core's token policies' clock, still until the test moves it, so
    when they decide to refresh does not depend on how fast the machine is."""
    import azure.core.pipeline.policies._authentication as authentication

    class Clock:
        now = time.time()

        def time(self):
            return self.now

    clock = Clock()
    monkeypatch.setattr(authentication, "time", clock)
    return clock


def wait_past_refresh_on(minted_by):
    """Sleep (real time: the credential's clock) until a token minted before
    ``minted_by`` with ``refresh_in=1`` is due; its refresh_on is whole
    seconds, at most the mint's second plus one. Sleeping longer is harmless."""
    time.sleep(max(0.0, minted_by + 1.05 - time.time()))


def test_an_azure_core_pipeline_refreshes_at_refresh_on(env, broker, tmp_path, no_jitter, policy_clock):
    broker.token("first", expires_in=3600, refresh_in=1)
    broker.token("second", expires_in=3600)
    resource = protected_resource(tmp_path, accepted_tokens={"first", "second"})
    try:
        policy = BearerTokenCredentialPolicy(StudioAzureCredBroker(), STORAGE)
        with PipelineClient(resource.url, policies=[policy], connection_verify=resource.ca_path) as client:
            get = lambda: client.send_request(HttpRequest("GET", resource.url + "/blob")).status_code
            assert [get(), get()] == [200, 200]
            wait_past_refresh_on(time.time())
            policy_clock.now = time.time()
            assert get() == 200
    finally:
        resource.close()
    # The policy asks again once refresh_on has passed; the credential's cache
    # honours refresh_on too, and mints anew.
    assert [auth for _, _, auth in resource.requests] == ["Bearer first", "Bearer first", "Bearer second"]
    assert audiences(broker) == ["storage", "storage"]


@pytest.mark.asyncio
async def test_an_async_pipeline_with_the_async_credential(env, broker, tmp_path, no_jitter, policy_clock):
    broker.token("async-first", expires_in=3600, refresh_in=1)
    broker.token("async-second", expires_in=3600)
    resource = protected_resource(tmp_path, accepted_tokens={"async-first", "async-second"})
    statuses = []
    try:
        async with aio.StudioAzureCredBroker() as credential:
            policy = AsyncBearerTokenCredentialPolicy(credential, STORAGE)
            async with AsyncPipelineClient(
                resource.url, policies=[policy], connection_verify=resource.ca_path
            ) as client:
                for i in range(3):
                    if i == 2:
                        await asyncio.sleep(max(0.0, minted_by + 1.05 - time.time()))
                        policy_clock.now = time.time()
                    response = await client.send_request(HttpRequest("GET", resource.url + "/blob"))
                    statuses.append(response.status_code)
                    minted_by = time.time()
    finally:
        resource.close()
    assert statuses == [200, 200, 200]
    assert [auth for _, _, auth in resource.requests] == [
        "Bearer async-first", "Bearer async-first", "Bearer async-second",
    ]


def test_the_consumers_through_the_runtime_access_helper(helper, dbt_livy):
    from dbt.adapters.fabricspark.credentials import FabricSparkCredentials
    from dlt.common.configuration.specs import AzureCredentials

    helper.token("helper-powerbi")
    helper.token("helper-storage")
    headers = dbt_livy.get_headers(FabricSparkCredentials.from_dict(fabric_profile()))
    assert headers["Authorization"] == "Bearer helper-powerbi"
    rs = AzureCredentials.from_credential(StudioAzureCredBroker()).to_object_store_rs_credentials()
    assert rs["azure_storage_token"] == "helper-storage"
    assert [json.loads(r["body"]) for r in helper.requests()] == [
        {"scope": "data_platform", "audience": "fabric_cli"},
        {"scope": "data_platform", "audience": "storage"},
    ]
