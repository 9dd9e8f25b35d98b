"""The asyncio credential: the same tokens, and the event loop keeps running
while the broker answers."""

import asyncio
import json

import pytest
from azure.core.credentials import AccessToken, AccessTokenInfo

import vd_cred_broker
from vd_cred_broker import aio

VAULT = "https://vault.azure.net/.default"


@pytest.mark.asyncio
async def test_get_token_and_get_token_info(env, broker):
    broker.token("a1", expires_in=7200)
    async with aio.StudioAzureCredBroker(cache=False) as cred:
        token = await cred.get_token(VAULT)
        info = await cred.get_token_info(VAULT)
    assert type(token) is AccessToken and token.token == "a1"
    assert type(info) is AccessTokenInfo and info.token == "mock-token-2"
    with pytest.raises(vd_cred_broker.ConfigurationError, match="closed"):
        await cred.get_token(VAULT)


@pytest.mark.asyncio
async def test_the_event_loop_runs_while_the_broker_answers(env, broker):
    broker.reply(200, json.dumps({"access_token": "slow", "expires_in": 3600}), delay_ms=500)
    cred = aio.StudioAzureCredBroker()
    ticks = 0
    stop = asyncio.Event()

    async def tick():
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.005)

    ticker = asyncio.create_task(tick())
    token = await cred.get_token(VAULT)
    stop.set()
    await ticker
    assert token.token == "slow"
    assert ticks > 20, f"the loop ticked only {ticks} times during a 500 ms mint"


@pytest.mark.asyncio
async def test_errors_keep_their_types(env, broker):
    broker.reply(401, '{"error":"revoked"}')
    cred = aio.StudioAzureCredBroker()
    with pytest.raises(RuntimeError) as excinfo:
        await cred.get_token(VAULT)
    assert type(excinfo.value) is vd_cred_broker.BrokerRejectedError
    assert (excinfo.value.kind, excinfo.value.status) == ("broker-rejected", 401)
    with pytest.raises(vd_cred_broker.ScopeNotAllowedError):
        await cred.get_token("https://example.com/.default")
