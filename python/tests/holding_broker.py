"""A plain-http broker on 127.0.0.1 that answers each request with a token
naming its audience, and holds the answers for chosen audiences until the test
releases them: calls in flight are ordered by the test, not by a clock."""

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BASE_PATH = "/api/v1/credential-broker"


class HoldingBroker:
    def __init__(self):
        self.audiences = []  # of every request, in arrival order
        self._gates = {}  # audience -> Event, set when released
        self._holding = {}  # audience -> whether only its next request is held
        self._changed = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                audience = body["audience"]
                gate = None
                with outer._changed:
                    outer.audiences.append(audience)
                    n = len(outer.audiences)
                    if audience in outer._holding:
                        gate = outer._gates[audience]
                        if outer._holding[audience]:
                            del outer._holding[audience]
                    outer._changed.notify_all()
                if gate is not None:
                    gate.wait()
                answer = json.dumps({"access_token": f"held-{audience}-{n}", "expires_in": 3600}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                except OSError:
                    pass  # the client went away

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{BASE_PATH}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def hold(self, audience, next_only=False):
        """Hold the answers for ``audience`` (only its next request's, with
        ``next_only``) until :meth:`release`."""
        with self._changed:
            self._gates[audience] = threading.Event()
            self._holding[audience] = next_only

    def release(self, audience):
        with self._changed:
            self._holding.pop(audience, None)
            self._gates.pop(audience).set()

    def wait_for(self, count, hang=60):
        """Block until ``count`` requests have arrived; ``hang`` seconds only
        catches a client that never sends (it sends in milliseconds)."""
        with self._changed:
            arrived = self._changed.wait_for(lambda: len(self.audiences) >= count, timeout=hang)
        assert arrived, f"the broker received {len(self.audiences)} of {count} requests"

    def run_script(self, script, arrivals, hang=120):
        """Run ``script`` in a new interpreter; once ``arrivals`` requests have
        come, send it a line and let it finish. Its (exit code, stdout, stderr);
        ``hang`` seconds only catch a process that never exits."""
        child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            self.wait_for(arrivals, hang)
            out, err = child.communicate("go\n", timeout=hang)
        finally:
            child.kill()
        return child.returncode, out, err

    def close(self):
        with self._changed:
            for gate in self._gates.values():
                gate.set()
        self.server.shutdown()
        self.server.server_close()
