"""The tests' one HTTPS server: on 127.0.0.1 with a throw-away CA (trustme)
and a certificate for chosen names, for the resource side of the consumer
tests (a mock Key Vault and a plain protected resource), an https broker
trusted through SSL_CERT_FILE, and the https broker the proxy tests reach
through a proxy under a name only the proxy resolves. Records every request;
accepts only the tokens it is told to."""

import itertools
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import trustme

TENANT = "00000000-0000-0000-0000-000000000001"
BROKER_PATH = "/api/v1/credential-broker"


class TlsServer:
    """``handler(method, path, headers) -> (status, headers, body)``, over TLS,
    with a certificate for ``names``; its CA written to ``ca_path`` (a file of
    its own under ``tmp_path``). ``requests``: (method, path, Authorization)
    of every request, recorded before ``handler`` runs."""

    def __init__(self, tmp_path, handler, names=("127.0.0.1", "localhost")):
        self.requests = []
        ca = trustme.CA()
        cert = ca.issue_cert(*names)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self.do_GET()

            def do_GET(self):
                outer.requests.append((self.command, self.path, self.headers.get("Authorization")))
                status, headers, body = handler(self.command, self.path, self.headers)
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.url = f"https://127.0.0.1:{self.port}"
        self.ca_path = str(tmp_path / f"ca-{self.port}.pem")
        ca.cert_pem.write_to_path(self.ca_path)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url_for(self, host):
        """The broker URL naming ``host`` (one of the certificate's names)."""
        return f"https://{host}:{self.port}{BROKER_PATH}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def key_vault(tmp_path, accepted_tokens):
    """A mock Key Vault: a 401 challenge without a token, a secret with an accepted one."""

    def handle(method, path, headers):
        auth = headers.get("Authorization")
        if auth is None:
            challenge = (
                f'Bearer authorization="https://login.microsoftonline.com/{TENANT}", '
                'resource="https://vault.azure.net"'
            )
            return 401, [("WWW-Authenticate", challenge)], b""
        if auth.removeprefix("Bearer ") not in accepted_tokens:
            body = json.dumps({"error": {"code": "Unauthorized", "message": "token not accepted"}})
            return 401, [("Content-Type", "application/json")], body.encode()
        name = path.split("?")[0].strip("/").split("/")[1]
        body = json.dumps({
            "value": f"secret-value-of-{name}",
            "id": f"https://{headers['Host']}/secrets/{name}/0123456789abcdef0123456789abcdef",
            "attributes": {"enabled": True, "created": 1700000000, "updated": 1700000000,
                           "recoveryLevel": "Recoverable+Purgeable"},
            "tags": {},
        })
        return 200, [("Content-Type", "application/json; charset=utf-8")], body.encode()

    return TlsServer(tmp_path, handle)


def protected_resource(tmp_path, accepted_tokens):
    """200 ``ok`` for an accepted bearer token, 401 otherwise."""

    def handle(method, path, headers):
        auth = (headers.get("Authorization") or "").removeprefix("Bearer ")
        if auth in accepted_tokens:
            return 200, [("Content-Type", "text/plain")], b"ok"
        return 401, [], b""

    return TlsServer(tmp_path, handle)


def token_broker(tmp_path, names=("127.0.0.1", "localhost")):
    """An https broker answering every request with a fresh token,
    ``tls-token-<n>`` (n counts requests)."""
    minted = itertools.count(1)

    def mint(method, path, headers):
        body = json.dumps({"access_token": f"tls-token-{next(minted)}", "expires_in": 3600})
        return 200, [("Content-Type", "application/json")], body.encode()

    return TlsServer(tmp_path, mint, names)
