"""A loopback HTTP proxy for the proxy tests: CONNECT tunnels (https) and
absolute-form forwarding (plain http), every request recorded. It resolves
only the names it is told (``mapping``, e.g. ``broker.invalid`` to the mock
broker) and IP literals, so a broker named that way is reachable only
through it. It can require ``Proxy-Authorization`` (407 otherwise).
(The https broker behind it is ``tls_server.token_broker``.)"""

import ipaddress
import select
import socket
import threading
from urllib.parse import urlsplit


class ProxyServer:
    def __init__(self, mapping=None, required_auth=None):
        self.mapping = {k.lower(): v for k, v in (mapping or {}).items()}
        self.required_auth = required_auth
        self.log = []  # (method, target, proxy-authorization, status)
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def entries(self):
        """(method, target) of every request the proxy served, in order."""
        with self.lock:
            return [(m, t) for m, t, _, s in self.log if s in (0, 200)]

    def authorizations(self):
        with self.lock:
            return [a for _, _, a, _ in self.log]

    def reset(self):
        with self.lock:
            self.log.clear()

    def close(self):
        self.closed = True
        self.sock.close()

    def _resolve(self, host, port):
        host = host.strip("[]").lower()
        if host in self.mapping:
            return self.mapping[host]
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return None
        return (host, port)

    def _accept(self):
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _record(self, method, target, auth, status):
        with self.lock:
            self.log.append((method, target, auth, status))

    @staticmethod
    def _answer(conn, status, reason, extra=""):
        conn.sendall(
            f"HTTP/1.1 {status} {reason}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
        )
        conn.close()

    def _handle(self, conn):
        try:
            self._serve(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def _serve(self, conn):
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(1)
            if not chunk:
                return
            head += chunk
        lines = head.decode("latin-1").split("\r\n")
        method, target = lines[0].split(" ")[:2]
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        auth = headers.get("proxy-authorization")
        if self.required_auth is not None and auth != self.required_auth:
            self._record(method, target, auth, 407)
            return self._answer(conn, 407, "Proxy Authentication Required",
                                'Proxy-Authenticate: Basic realm="test"\r\n')
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            addr = self._resolve(host, int(port))
            try:
                upstream = socket.create_connection(addr) if addr else None
            except OSError:
                upstream = None
            if upstream is None:
                self._record(method, target, auth, 502)
                return self._answer(conn, 502, "Bad Gateway")
            self._record(method, target, auth, 200)
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self._pipe(conn, upstream)
            return
        url = urlsplit(target)
        addr = self._resolve(url.hostname or "", url.port or 80)
        try:
            upstream = socket.create_connection(addr) if addr else None
        except OSError:
            upstream = None
        if upstream is None:
            self._record(method, target, auth, 502)
            return self._answer(conn, 502, "Bad Gateway")
        self._record(method, target, auth, 0)
        body = b""
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = conn.recv(length - len(body))
            if not chunk:
                return
            body += chunk
        path = url.path + (f"?{url.query}" if url.query else "")
        out = f"{method} {path} HTTP/1.1\r\n"
        for k, v in headers.items():
            if k not in ("proxy-authorization", "proxy-connection", "connection"):
                out += f"{k}: {v}\r\n"
        out += "connection: close\r\n\r\n"
        upstream.sendall(out.encode("latin-1") + body)
        while True:
            chunk = upstream.recv(65536)
            if not chunk:
                break
            conn.sendall(chunk)
        upstream.close()

    @staticmethod
    def _pipe(a, b):
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [], 30)
                if not ready:
                    return
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    (b if s is a else a).sendall(data)
        finally:
            b.close()

