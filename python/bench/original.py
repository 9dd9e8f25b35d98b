"""The original credential (vibedata-studio-azure-cred-broker 0.2.0), driven
by the Rust benchmarks (host-test/src/original.rs) against their broker.

    original.py calls N      N sequential get_token calls; prints their times (JSON, seconds)
    original.py agent        one credential; prints "ready RSS_KIB", then on a line
                             "go RELEASE" from stdin makes one get_token and prints the
                             seconds from RELEASE (Unix time, the caller's clock) to its end
    original.py threads N    N credentials in N threads; prints "ready RSS_KIB", then on
                             "go RELEASE" all call get_token at once; prints each one's
                             seconds from RELEASE to its end (JSON)

The environment carries VD_CREDENTIAL_BROKER_URL, VD_CREDENTIAL_FILE (and the
lane and revision: 0.2.0 always speaks protocol 0.2).
"""

import json
import sys
import threading
import time

from vibedata_studio_azure_cred_broker import StudioAzureCredBroker

VAULT = "https://vault.azure.net/.default"


def rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def timed(credential):
    t = time.perf_counter()
    credential.get_token(VAULT)
    return time.perf_counter() - t


def main():
    mode = sys.argv[1]
    if mode == "calls":
        credential = StudioAzureCredBroker()
        for _ in range(50):
            credential.get_token(VAULT)
        print(json.dumps([timed(credential) for _ in range(int(sys.argv[2]))]))
    elif mode == "agent":
        credential = StudioAzureCredBroker()
        print(f"ready {rss_kib()}", flush=True)
        release = float(sys.stdin.readline().split()[1])
        credential.get_token(VAULT)
        print(time.time() - release, flush=True)
    elif mode == "threads":
        n = int(sys.argv[2])
        credentials = [StudioAzureCredBroker() for _ in range(n)]
        times = [0.0] * n
        go = threading.Event()
        release = [0.0]

        def agent(i):
            go.wait()
            credentials[i].get_token(VAULT)
            times[i] = time.time() - release[0]

        threads = [threading.Thread(target=agent, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        print(f"ready {rss_kib()}", flush=True)
        release[0] = float(sys.stdin.readline().split()[1])
        go.set()
        for t in threads:
            t.join()
        print(json.dumps(times), flush=True)
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
