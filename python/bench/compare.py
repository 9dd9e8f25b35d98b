"""Side by side, in one run, against one fast loopback broker: the original
``vibedata-studio-azure-cred-broker`` 0.2.0 and this package.

    python python/bench/compare.py --broker <host-test> [--wheel <x.whl>] [--cli <vd-cred>] [--agent <agent.wasm>]

(``scripts/bench-python.sh`` builds the release wheel and the command line as
``cargo run -p vd-cred-cli`` does, and runs this.) With ``--cli``, the rows of
"Starting a process" too: ``vd-cred get-token`` as a whole process against the
original's, and with ``--agent`` (the Python agent), ``vd-cred run-agent``
first (its own empty cache each time) and later. The broker
is ``host-test fast-broker``: one write per answer, TCP_NODELAY; its own round
trip is measured first, so the rows show the clients, not the broker. Prints a
Markdown table of medians (p90 in brackets).
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

VAULT = "https://vault.azure.net/.default"


def stats(samples):
    samples = sorted(samples)
    p90 = samples[int((len(samples) - 1) * 0.9)]
    return f"{show(statistics.median(samples))} ({show(p90)} p90, n={len(samples)})"


def show(seconds):
    if seconds >= 0.01:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} us"


def timed(n, f):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        out.append(time.perf_counter() - t)
    return out


def broker_round_trips(url, n):
    """Raw-socket POSTs: on one kept-alive connection, and on a new connection each."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    body = b'{"audience":"vault"}'
    request = (
        b"POST /api/v1/credential-broker/token HTTP/1.1\r\nhost: x\r\n"
        b"content-type: application/json\r\ncontent-length: 20\r\n\r\n" + body
    )

    def exchange(sock):
        sock.sendall(request)
        answer = b""
        while not answer.endswith(b"}"):
            answer += sock.recv(4096)

    kept = socket.create_connection((host, int(port)))
    kept.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for _ in range(100):
        exchange(kept)
    alive = timed(n, lambda: exchange(kept))
    kept.close()

    def fresh():
        with socket.create_connection((host, int(port))) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            exchange(s)

    return alive, timed(n, fresh)


FIRST_TOKEN = """
import sys, time
t = time.perf_counter()
if sys.argv[1] == "original":
    from vibedata_studio_azure_cred_broker import StudioAzureCredBroker
else:
    from vd_cred_broker import StudioAzureCredBroker
StudioAzureCredBroker().get_token(sys.argv[2])
print(time.perf_counter() - t)
"""


# What a credential adds to a process that has imported azure.core already
# (as every consumer has): its import, its constructor and its first
# get_token, each timed.
BEYOND_AZURE_CORE = """
import sys, time
import azure.core.credentials
t0 = time.perf_counter()
if sys.argv[1] == "original":
    from vibedata_studio_azure_cred_broker import StudioAzureCredBroker
else:
    from vd_cred_broker import StudioAzureCredBroker
t1 = time.perf_counter()
credential = StudioAzureCredBroker()
t2 = time.perf_counter()
credential.get_token(sys.argv[2])
t3 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2)
"""


def beyond_azure_core(which):
    """(import, constructor, first get_token) seconds in a new process."""
    out = subprocess.run(
        [sys.executable, "-c", BEYOND_AZURE_CORE, which, VAULT], capture_output=True, text=True, check=True
    )
    return [float(x) for x in out.stdout.split()]


def new_process(which, n):
    """Wall time of a whole process, and its time from `import` to the first token."""
    walls, inside = [], []
    for _ in range(n):
        t = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", FIRST_TOKEN, which, VAULT], capture_output=True, text=True, check=True
        )
        walls.append(time.perf_counter() - t)
        inside.append(float(out.stdout))
    return walls, inside


CA_VARS = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def whole_process(argv, env=None):
    """Wall seconds of one process, and its peak RSS in KiB (this run's
    children only: each is waited for alone)."""
    t = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{argv[:3]} failed: {proc.stderr.read().decode()}")
    return wall, usage.ru_maxrss


def process_rows(cli, agent, n):
    """`vd-cred get-token` and the original's whole process, paired run for
    run, with the three CA variables set to the system's bundle (the
    original's `requests` reads them; ours reads a bundle only for https);
    then `run-agent` if an agent is given."""
    env = dict(os.environ)
    bundle = "no system bundle found: CA variables unset"
    if os.path.exists(SYSTEM_BUNDLE):
        env.update({name: SYSTEM_BUNDLE for name in CA_VARS})
        bundle = f"CA variables set to {SYSTEM_BUNDLE}"
    original = [sys.executable, "-c", FIRST_TOKEN, "original", VAULT]
    ours = [cli, "get-token", VAULT]
    whole_process(original, env)
    whole_process(ours, env)
    o, c, ratios = [], [], []
    for _ in range(n):
        o.append(whole_process(original, env)[0])
        c.append(whole_process(ours, env)[0])
        ratios.append(c[-1] / o[-1])
    rows = [
        ("new process: the original's, python -c, import and get_token", stats(o), bundle),
        ("new process: `vd-cred get-token` (this build of the CLI)", stats(c), bundle),
        ("`vd-cred get-token` / the original's process", f"{statistics.median(ratios):.3f}x", "median of the pairs"),
    ]
    if agent:
        call = ["--allow", "https://vault.azure.net", "--invoke", f'mint(["{VAULT}"])']
        first, peaks = [], []
        for _ in range(3):
            with tempfile.TemporaryDirectory() as cache:
                wall, peak = whole_process([cli, "run-agent", agent, *call], {**env, "VD_CRED_BROKER_CACHE_DIR": cache})
            first.append(wall)
            peaks.append(peak)
        rows.append(("`vd-cred run-agent` the agent, first run: compiles it", stats(first), f"{max(peaks) // 1024} MiB peak, own empty cache each run"))
        with tempfile.TemporaryDirectory() as cache:
            later_env = {**env, "VD_CRED_BROKER_CACHE_DIR": cache}
            whole_process([cli, "run-agent", agent, *call], later_env)
            later, peaks = [], []
            for _ in range(10):
                wall, peak = whole_process([cli, "run-agent", agent, *call], later_env)
                later.append(wall)
                peaks.append(peak)
        rows.append(("`vd-cred run-agent` the agent, later runs: from the cache", stats(later), f"{max(peaks) // 1024} MiB peak"))
    return rows


def start_broker(host_test):
    """``host-test fast-broker`` and a bearer file, with the environment
    pointing both credentials at them: (the broker's process, its URL)."""
    broker = subprocess.Popen([host_test, "fast-broker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    url = broker.stdout.readline().strip()
    bearer_dir = tempfile.mkdtemp()
    bearer = os.path.join(bearer_dir, "credential")
    with open(bearer, "w") as f:
        f.write("vd_iat_bench\n")
    os.environ.update({
        "VD_CREDENTIAL_BROKER_URL": url,
        "VD_CREDENTIAL_FILE": bearer,
        # The original 0.2.0 always speaks protocol 0.2, so both do here.
        "VD_CREDENTIAL_LANE": "user",
        "VD_CREDENTIAL_CONFIGURATION_REVISION": "1",
        "VD_RUNTIME_ACCESS_SOCKET": os.path.join(bearer_dir, "no-helper.sock"),
    })
    return broker, url


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--broker", required=True, help="the host-test binary (fast-broker)")
    parser.add_argument("--wheel", help="the wheel to report the size of")
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--cli", help="the vd-cred binary, for the process rows")
    parser.add_argument("--agent", help="an agent component exporting mint(scopes), for the run-agent rows")
    parser.add_argument("--processes", type=int, default=20, help="paired process runs")
    args = parser.parse_args()

    broker, url = start_broker(args.broker)

    from vibedata_studio_azure_cred_broker import StudioAzureCredBroker as Original
    from vd_cred_broker import StudioAzureCredBroker

    n = args.rounds
    rows = []
    alive, fresh = broker_round_trips(url, n)
    rows.append(("broker round trip, raw socket, kept-alive connection", stats(alive), ""))
    rows.append(("broker round trip, raw socket, new connection each", stats(fresh), "what both clients pay per mint"))

    original = Original()
    uncached = StudioAzureCredBroker(cache=False)
    cached = StudioAzureCredBroker()
    for cred in (original, uncached, cached):
        for _ in range(50):
            cred.get_token(VAULT)
    # Interleave the two uncached runs in blocks, so drift hits both alike.
    o, u = [], []
    for _ in range(10):
        o += timed(n // 10, lambda: original.get_token(VAULT))
        u += timed(n // 10, lambda: uncached.get_token(VAULT))
    c = timed(n * 5, lambda: cached.get_token(VAULT))
    rows.append(("get_token, original 0.2.0 (no cache: every call mints)", stats(o), "requests, new connection per call"))
    rows.append(("get_token, uncached (cache=False), this package", stats(u), "sandboxed component, kept-alive connection"))
    rows.append(("get_token, cached, this package", stats(c), "bearer checked (path identity + kept file) + cache lookup"))
    om, um, cm = statistics.median(o), statistics.median(u), statistics.median(c)
    rows.append(("uncached: this package / original", f"{um / om:.2f}x", "target: at most 1x"))
    rows.append(("cached vs the original's call", f"{om / cm:.0f}x faster", "target: at least 20x"))

    ow, oi, pw, pi = [], [], [], []
    for _ in range(10):  # interleaved
        w, i = new_process("original", 1)
        ow += w
        oi += i
        w, i = new_process("ours", 1)
        pw += w
        pi += i
    parts = {"original": [], "ours": []}
    for _ in range(20):  # interleaved
        for which in parts:
            parts[which].append(beyond_azure_core(which))
    for which, name in (("original", "original 0.2.0"), ("ours", "this package")):
        runs = parts[which]
        total = [sum(r) for r in runs]
        rows.append((
            f"new process, beyond azure.core: import + constructor + first token, {name}",
            stats(total),
            "import {} + constructor {} + first get_token {} (medians)".format(
                *(show(statistics.median(r[i] for r in runs)) for i in range(3))
            ),
        ))
    ratios = [sum(o) / sum(p) for o, p in zip(parts["ours"], parts["original"])]
    rows.append(("beyond azure.core: this package / original", f"{statistics.median(ratios):.3f}x", "median of the pairs"))
    rows.append(("new process: import to first token, original", stats(oi), ""))
    rows.append(("new process: import to first token, this package", stats(pi), "precompiled component from the user cache"))
    rows.append(("new process: whole process, original", stats(ow), "python -c, interpreter start included"))
    rows.append(("new process: whole process, this package", stats(pw), ""))
    if args.cli:
        rows += process_rows(args.cli, args.agent, args.processes)
    if args.wheel:
        rows.append(("wheel size", f"{os.path.getsize(args.wheel):,} bytes", os.path.basename(args.wheel)))

    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; broker {url}\n")
    print("| measure | result | note |\n| --- | --- | --- |")
    for name, result, note in rows:
        print(f"| {name} | {result} | {note} |")
    broker.stdin.close()
    broker.wait()


if __name__ == "__main__":
    main()
