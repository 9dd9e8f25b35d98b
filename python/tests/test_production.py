"""Production conditions: fork, pre-forking servers, multiprocessing in every
start method, copies and pickles, threads over several audiences, and process
hygiene. Each process checks it got only its own right tokens: the brokers
name the audience and the request number in every token they mint.

Nothing here waits on a clock: calls in flight are held by the broker until
the test releases them, and bounds come from the broker's log. The only
timeouts catch a hang (a child or a call that never ends), far above the
milliseconds the work takes.
"""

import copy
import json
import multiprocessing
import os
import pickle
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import pytest

import vd_cred_broker
import workers
from vd_cred_broker import StudioAzureCredBroker, _native
from vd_cred_broker import aio
from workers import STORAGE, VAULT

HANG = 120  # seconds: only a process that never ends takes this long


def in_threads(n, f):
    """``f(i)`` on ``n`` threads at once; their results, or the first error."""
    results, errors = [None] * n, []

    def run(i):
        try:
            results[i] = f(i)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def mint_in_threads(credential, threads, calls_each):
    """``threads`` threads each making ``calls_each`` calls, alternating vault and storage."""
    per_thread = in_threads(threads, lambda i: workers.mint(credential, calls_each)[1])
    return [pair for pairs in per_thread for pair in pairs]


def forked(f):
    """Run ``f()`` in a forked child; returns its pid. The child sends
    ``f()``'s JSON result (or its error) down a pipe: see :func:`reap`."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            out = json.dumps({"ok": f()})
        except BaseException as e:
            out = json.dumps({"error": repr(e)})
        with os.fdopen(write, "w") as w:
            w.write(out)
        os._exit(0)
    os.close(write)
    return pid, read


def reap(children):
    """Each forked child's result, in order; a child that hangs fails the test."""
    results = []
    for pid, read in children:
        done = threading.Event()
        threading.Thread(target=lambda: (done.wait(HANG) or os.kill(pid, 9)), daemon=True).start()
        with os.fdopen(read) as r:
            text = r.read()
        _, status = os.waitpid(pid, 0)
        done.set()
        assert os.WIFEXITED(status), f"child {pid} hung and was killed (status {status})"
        result = json.loads(text)
        assert "error" not in result, f"child {pid}: {result['error']}"
        results.append(result["ok"])
    return results


def assert_own_tokens(pairs):
    """Every token names the audience asked for."""
    for audience, token in pairs:
        assert token.startswith(f"mock-{audience}-"), (audience, token)


def test_forked_children_and_the_parent_get_only_their_own_tokens(env, broker):
    """The issue's run: used before the fork, then the parent and four
    children each make 40 uncached calls at once."""
    broker.named()
    cred = StudioAzureCredBroker(cache=False)
    assert cred.get_token(VAULT).token == "mock-vault-1"  # a kept-alive connection now
    children = [forked(lambda: mint_in_threads(cred, 4, 10)) for _ in range(4)]
    parent = mint_in_threads(cred, 4, 10)
    everyone = reap(children) + [parent]
    pairs = [tuple(p) for process in everyone for p in process]
    assert len(pairs) == 5 * 40
    assert_own_tokens(pairs)
    tokens = [token for _, token in pairs]
    # Each minted token reached exactly one caller: none crossed, none lost.
    assert sorted(tokens + ["mock-vault-1"]) == sorted(broker.minted())


@pytest.mark.parametrize("cache", [True, False])
def test_a_fork_while_a_call_is_in_flight_does_not_block_the_child(holding, cache):
    """A parent thread holds the audience's sandbox (its lock, with the
    cache) and its connection at the moment of the fork; the child builds
    its own."""
    cred = StudioAzureCredBroker(cache=cache, timeout=600)
    holding.hold("vault", next_only=True)
    parent_tokens = []
    in_flight = threading.Thread(target=lambda: parent_tokens.append(cred.get_token(VAULT).token))
    in_flight.start()
    holding.wait_for(1)
    child = forked(lambda: [cred.get_token(VAULT).token, cred.get_token(STORAGE).token])
    [child_tokens] = reap([child])
    assert child_tokens == ["held-vault-2", "held-storage-3"]
    assert in_flight.is_alive(), "the parent's call is still held"
    holding.release("vault")
    in_flight.join()
    assert parent_tokens == ["held-vault-1"]


UNUSABLE_CACHE = """
import os, sys
from vd_cred_broker import StudioAzureCredBroker, preload
assert not preload(), "compiled, on rayon's pool"
cred = StudioAzureCredBroker()
pid = os.fork()
if pid == 0:
    # No cache to load from: the child compiles again, on one thread.
    print(cred.get_token("https://vault.azure.net/.default").token, flush=True)
    os._exit(0)
_, status = os.waitpid(pid, 0)
print(os.WEXITSTATUS(status))
"""


def test_a_forked_child_compiles_when_there_is_no_cache(env, broker, tmp_path):
    """A parent that compiled the component on rayon's pool forks: the pool's
    threads are gone in the child, which must compile without them."""
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    environ = dict(os.environ, VD_CRED_BROKER_CACHE_DIR=str(blocked / "cache"))
    out = subprocess.run([sys.executable, "-c", UNUSABLE_CACHE], env=environ,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["mock-token-1", "0"]


def test_a_pre_forking_server(env, broker):
    """The parent warms the credential; four workers serve from threads.
    Each process mints once per audience and keeps its own cache."""
    broker.named()
    cred = StudioAzureCredBroker()
    warm = cred.get_token(VAULT).token
    assert warm == "mock-vault-1"
    children = [forked(lambda: mint_in_threads(cred, 4, 6)) for _ in range(4)]
    served = reap(children)
    minted = broker.minted()
    assert len(minted) == 1 + 4 * 2, "one mint per audience per worker, after the parent's"
    seen = set()
    for worker in served:
        pairs = [tuple(p) for p in worker]
        assert_own_tokens(pairs)
        own = {token for _, token in pairs}
        assert len(own) == 2, f"one token per audience in a worker: {own}"
        assert not own & seen and warm not in own, "no worker shares another's (or the parent's) token"
        seen |= own
    assert sorted(seen | {warm}) == sorted(minted)
    assert cred.get_token(VAULT).token == warm, "the parent's cache is its own"


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_multiprocessing_in_every_start_method(env, broker, method):
    """fork: the children inherit the credential; forkserver and spawn: it is
    pickled to them. Uncached, so every call is a mint."""
    broker.named()
    cred = StudioAzureCredBroker(cache=False)
    cred.get_token(STORAGE)
    ctx = multiprocessing.get_context(method)
    queue = ctx.Queue()
    workers.INHERITED = cred
    try:
        sent = None if method == "fork" else cred
        processes = [ctx.Process(target=workers.mint_to_queue, args=(queue, sent, 6)) for _ in range(3)]
        for p in processes:
            p.start()
        results = [queue.get(timeout=HANG) for _ in processes]
        for p in processes:
            p.join(HANG)
            assert p.exitcode == 0
    finally:
        workers.INHERITED = None
    pids = set()
    tokens = ["mock-storage-1"]
    for pid, pairs in results:
        assert isinstance(pairs, list), pairs
        assert_own_tokens(pairs)
        pids.add(pid)
        tokens += [token for _, token in pairs]
    assert os.getpid() not in pids and len(pids) == 3
    assert sorted(tokens) == sorted(broker.minted())


def test_a_spawn_process_pool_takes_the_credential(env, broker):
    broker.named()
    cred = StudioAzureCredBroker(cache=False)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(workers.mint, [cred] * 4, [4] * 4))
    pairs = [pair for _, pairs in results for pair in pairs]
    assert_own_tokens(pairs)
    assert sorted(token for _, token in pairs) == sorted(broker.minted())


@pytest.mark.parametrize("how", ["copy", "deepcopy", "pickle"])
@pytest.mark.parametrize("cls", [StudioAzureCredBroker, aio.StudioAzureCredBroker])
def test_a_copy_is_a_new_credential_with_the_same_arguments(env, broker, bearer, how, cls):
    broker.named()
    audience_map = {"https://vault.azure.net": "key_vault_data_plane"}
    original = cls(lane="user", configuration_revision=3, audience_map=audience_map)
    sync = original._sync if cls is aio.StudioAzureCredBroker else original
    token = sync.get_token(VAULT).token
    # The copy keeps the environment read at construction, as the original's attributes do.
    env.setenv("VD_CREDENTIAL_BROKER_URL", "http://127.0.0.1:9/not-the-broker")
    pickled = pickle.dumps(original)
    assert bearer.value.encode() not in pickled and token.encode() not in pickled
    made = {"copy": copy.copy, "deepcopy": copy.deepcopy, "pickle": lambda c: pickle.loads(pickle.dumps(c))}[how]
    duplicate = made(original)
    assert type(duplicate) is cls
    dup_sync = duplicate._sync if cls is aio.StudioAzureCredBroker else duplicate
    assert dup_sync._native is not sync._native
    assert dup_sync.get_token(VAULT).token == "mock-key_vault_data_plane-2", "no token crossed"
    first, second = broker.requests()
    assert json.loads(second["body"]) == json.loads(first["body"]) == {
        "audience": "key_vault_data_plane", "scope": "secret_store", "lane": "user", "configurationRevision": 3,
    }
    assert second["headers"]["authorization"] == f"Bearer {bearer.value}"
    sync.close()
    assert dup_sync.get_token(VAULT).token == "mock-key_vault_data_plane-2", "closing one leaves the other"


def test_a_cached_call_answers_while_another_audience_waits_on_the_broker(holding):
    cred = StudioAzureCredBroker(timeout=600)
    assert cred.get_token(VAULT).token == "held-vault-1"
    holding.hold("storage")
    storage = []
    slow = threading.Thread(target=lambda: storage.append(cred.get_token(STORAGE).token))
    slow.start()
    holding.wait_for(2)
    vault = []
    fast = threading.Thread(target=lambda: vault.append(cred.get_token(VAULT).token))
    fast.start()
    fast.join(HANG)
    blocked = fast.is_alive()
    holding.release("storage")
    slow.join()
    fast.join()
    assert not blocked, "the cached vault call waited on the storage mint"
    assert vault == ["held-vault-1"] and storage == ["held-storage-2"]
    assert holding.audiences == ["vault", "storage"]


def test_concurrent_misses_for_one_audience_mint_once_while_another_is_held(holding):
    """Eight callers miss vault at once (all eight are in the credential while
    the first mint is held), with a storage mint held too: one vault mint."""
    cred = StudioAzureCredBroker(timeout=600)
    holding.hold("storage")
    storage = threading.Thread(target=cred.get_token, args=(STORAGE,))
    storage.start()
    holding.wait_for(1)
    holding.hold("vault")
    vault = []
    callers = [threading.Thread(target=lambda: vault.append(cred.get_token(VAULT).token)) for _ in range(8)]
    for t in callers:
        t.start()
    holding.wait_for(2)
    for _ in range(HANG * 100):
        if cred._native.calls_in_flight == 1 + 8:
            break
        time.sleep(0.01)
    assert cred._native.calls_in_flight == 9, "every caller is waiting in the credential"
    assert holding.audiences == ["storage", "vault"]
    holding.release("vault")
    for t in callers:
        t.join()
    assert vault == ["held-vault-2"] * 8
    holding.release("storage")
    storage.join()
    assert holding.audiences == ["storage", "vault"]
    assert cred._native.sandbox_count == 2, "one sandbox per audience"
    assert cred._native.calls_in_flight == 0


def test_the_gil_is_released_while_the_broker_answers(holding):
    """A Python thread runs while a call waits: the broker answers only after
    that thread has counted to 100. With the GIL held, the thread could not
    run and the call would fail at its 60 s deadline instead."""
    cred = StudioAzureCredBroker(timeout=60)
    holding.hold("vault")

    def count():
        holding.wait_for(1)
        n = 0
        while n < 100:
            n += 1
        holding.release("vault")

    threading.Thread(target=count).start()
    assert cred.get_token(VAULT).token == "held-vault-1"


def test_the_environment_is_read_from_os_environ(env, broker):
    """As the original: ``os.environ``, not the C environment behind it."""
    os.putenv("VD_CREDENTIAL_BROKER_URL", "http://127.0.0.1:9/not-the-broker")
    broker.token("from-os-environ")
    assert StudioAzureCredBroker().get_token(VAULT).token == "from-os-environ"


def test_a_panic_inside_a_call_rebuilds_the_sandbox(env, broker):
    cred = StudioAzureCredBroker()
    assert cred.get_token(VAULT).token == "mock-token-1"
    _native.Credential._panic_in_next_call()
    with pytest.raises(vd_cred_broker.HostError, match="panicked"):
        cred.get_token(VAULT)
    # A fresh sandbox, so a fresh cache: the half-done one was not reused.
    assert cred.get_token(VAULT).token == "mock-token-2"
    assert cred._native.sandbox_count == 1
    assert len(broker.requests()) == 2


@pytest.mark.parametrize("call, name", [
    (lambda c: c.get_token(VAULT, tenant_id=123), "tenant_id"),
    (lambda c: c.get_token(VAULT, claims=b"{}"), "claims"),
    (lambda c: c.get_token(123), "scopes"),
    (lambda c: c.get_token_info(VAULT, options=[("tenant_id", "t")]), "options"),
    (lambda c: c.get_token_info(VAULT, options={"tenant_id": 5}), "tenant_id"),
    (lambda c: StudioAzureCredBroker(broker_url=8080), "broker_url"),
    (lambda c: StudioAzureCredBroker(lane=1), "lane"),
    (lambda c: StudioAzureCredBroker(credential_file=3), "credential_file"),
    (lambda c: StudioAzureCredBroker(audience_map={"https://vault.azure.net": 1}), "audience_map"),
    (lambda c: StudioAzureCredBroker(timeout="10"), "timeout"),
])
def test_a_wrong_argument_type_names_the_argument(env, broker, call, name):
    cred = StudioAzureCredBroker()
    with pytest.raises(vd_cred_broker.ConfigurationError) as e:
        call(cred)
    assert str(e.value).startswith(name), str(e.value)
    assert broker.requests() == []


COLLECTED = """
import sys, threading
from vd_cred_broker import StudioAzureCredBroker
cred = StudioAzureCredBroker(timeout=600)
cred.get_token("https://storage.azure.com/.default")
threading.Thread(target=cred.get_token, args=("https://vault.azure.net/.default",), daemon=True).start()
sys.stdin.readline()  # the broker holds the vault call now
del cred
print("exiting")
"""


def test_the_interpreter_exits_with_a_call_in_flight_and_no_close(holding):
    holding.hold("vault")
    code, out, err = holding.run_script(COLLECTED, arrivals=2)
    assert (code, out) == (0, "exiting\n"), err
    assert holding.audiences == ["storage", "vault"]
