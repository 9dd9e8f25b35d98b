"""The asyncio credential: the same tokens, and the event loop keeps running
while the broker answers."""

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from azure.core.credentials import AccessToken, AccessTokenInfo

import vd_cred_broker
from vd_cred_broker import _native, aio

VAULT = "https://vault.azure.net/.default"
HANG = 120  # seconds: only a call or process that never ends takes this long
AUDIENCES = {VAULT: "vault", "https://storage.azure.com/.default": "storage",
             "https://database.windows.net/.default": "sql"}


def aud(scope):
    return AUDIENCES[scope]


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


async def arrived(broker, count):
    """Until ``count`` requests reached the holding broker (the loop keeps running)."""
    for _ in range(HANG * 100):
        if len(broker.audiences) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the broker received {len(broker.audiences)} of {count} requests")


class CountingExecutor(ThreadPoolExecutor):
    """A default executor that counts what is submitted to it."""

    submitted = 0

    def submit(self, *args, **kwargs):
        self.submitted += 1
        return super().submit(*args, **kwargs)


@pytest.mark.asyncio
async def test_calls_wait_without_executor_threads_and_the_loop_runs(holding):
    """Three calls held by the broker occupy no thread of the loop's default
    executor (one worker, which getaddrinfo still gets), and the loop runs."""
    loop = asyncio.get_running_loop()
    executor = CountingExecutor(max_workers=1)
    loop.set_default_executor(executor)
    cred = aio.StudioAzureCredBroker(timeout=600)
    scopes = [VAULT, "https://storage.azure.com/.default", "https://database.windows.net/.default"]
    for scope in scopes:
        holding.hold(aud(scope))
    calls = [asyncio.create_task(cred.get_token(scope)) for scope in scopes]
    await arrived(holding, 3)
    assert await loop.getaddrinfo("127.0.0.1", 80)
    assert executor.submitted == 1, "only getaddrinfo used the executor"
    assert not any(call.done() for call in calls)
    for scope in scopes:
        holding.release(aud(scope))
    tokens = [t.token for t in await asyncio.gather(*calls)]
    for scope, token in zip(scopes, tokens):
        assert token.startswith(f"held-{aud(scope)}-")
    assert sorted(tokens) == sorted(f"held-{a}-{n}" for n, a in enumerate(holding.audiences, 1))
    assert executor.submitted == 1


@pytest.mark.asyncio
async def test_close_does_not_wait_for_a_call_in_flight(holding):
    cred = aio.StudioAzureCredBroker(timeout=600)
    holding.hold("vault")
    call = asyncio.create_task(cred.get_token(VAULT))
    await arrived(holding, 1)
    await cred.close()
    assert not call.done()
    with pytest.raises(vd_cred_broker.ConfigurationError, match="closed"):
        await cred.get_token(VAULT)
    holding.release("vault")
    assert (await call).token == "held-vault-1", "the call in flight finishes"


@pytest.mark.asyncio
async def test_a_cancelled_call_leaves_the_credential_usable(holding):
    cred = aio.StudioAzureCredBroker(timeout=600)
    holding.hold("vault")
    call = asyncio.create_task(cred.get_token(VAULT))
    await arrived(holding, 1)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    holding.release("vault")
    # The cancelled call still finished its mint, in its sandbox: the next
    # call queues behind it and finds the token cached.
    assert (await cred.get_token(VAULT)).token == "held-vault-1"
    assert holding.audiences == ["vault"]


@pytest.mark.asyncio
async def test_a_panic_inside_a_call_is_a_host_error_and_the_sandbox_is_rebuilt(env, broker):
    cred = aio.StudioAzureCredBroker()
    assert (await cred.get_token(VAULT)).token == "mock-token-1"
    _native.Credential._panic_in_next_call()
    with pytest.raises(vd_cred_broker.HostError, match="panicked"):
        await cred.get_token(VAULT)
    assert (await cred.get_token(VAULT)).token == "mock-token-2"


@pytest.mark.asyncio
async def test_a_forked_child_does_not_hold_up_a_call_in_flight(holding):
    """The child inherits the call's pipe; the call still ends when its
    answer comes, not when the child exits."""
    cred = aio.StudioAzureCredBroker(timeout=600)
    holding.hold("vault")
    call = asyncio.create_task(cred.get_token(VAULT))
    await arrived(holding, 1)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(write)
        os.read(read, 1)  # until the parent is done
        os._exit(0)
    os.close(read)
    try:
        holding.release("vault")
        token = await asyncio.wait_for(call, HANG)
    finally:
        os.close(write)
        os.waitpid(pid, 0)
    assert token.token == "held-vault-1"


RUN_AND_EXIT = """
import asyncio, sys
from vd_cred_broker import aio

async def main():
    cred = aio.StudioAzureCredBroker(timeout=600)
    asyncio.create_task(cred.get_token("https://vault.azure.net/.default"))
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

asyncio.run(main())  # cancels the held call; no close()
print("exited")
"""


def test_asyncio_run_returns_while_a_call_is_held(holding):
    """``asyncio.run`` shuts the default executor down on its way out: a
    thread parked there on a hung broker would keep the process alive."""
    holding.hold("vault")
    code, out, err = holding.run_script(RUN_AND_EXIT, arrivals=1)
    assert (code, out) == (0, "exited\n"), err


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
