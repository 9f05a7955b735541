"""A real HTTP forward proxy on 127.0.0.1, for the tests of the http/protobuf export behind a proxy.

It does what squid or tinyproxy do for a client: `CONNECT host:port` opens a TCP tunnel (an https
collector, TLS end to end through it), and a request for an absolute `http://` URL is forwarded to
that host and its answer relayed. It records what it was asked (`requests`: method, target,
Proxy-Authorization) so a test can tell the export went through it, and refuses a request without
the credentials when `credentials` is set (407).
"""
from __future__ import annotations

import base64
import http.client
import http.server
import select
import socket
import threading
from typing import Optional
from urllib.parse import urlsplit


class HttpProxy:
    def __init__(self, credentials: Optional[str] = None) -> None:
        self.requests: list[tuple[str, str, Optional[str]]] = []
        self._expected = "Basic " + base64.b64encode(credentials.encode()).decode() if credentials else None
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):  # noqa: A002 - the base class's name
                pass

            def _allowed(self) -> bool:
                auth = self.headers.get("Proxy-Authorization")
                proxy.requests.append((self.command, self.path, auth))
                if proxy._expected is None or auth == proxy._expected:
                    return True
                self.send_response(407)
                self.send_header("Proxy-Authenticate", 'Basic realm="test"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return False

            def do_CONNECT(self):
                if not self._allowed():
                    return
                host, _, port = self.path.rpartition(":")
                try:
                    upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
                except OSError:
                    self.send_error(502)
                    return
                self.send_response(200, "Connection established")
                self.end_headers()
                self.close_connection = True
                _relay(self.connection, upstream)

            def do_POST(self):
                if not self._allowed():
                    return
                url = urlsplit(self.path)
                if url.scheme != "http":
                    self.send_error(400, "absolute http:// URL expected")
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("proxy-authorization", "connection", "host")}
                upstream = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
                try:
                    upstream.request("POST", (url.path or "/") + (f"?{url.query}" if url.query else ""), body, headers)
                    answer = upstream.getresponse()
                    content = answer.read()
                except OSError:
                    self.send_error(502)
                    return
                finally:
                    upstream.close()
                self.send_response(answer.status, answer.reason)
                for k, v in answer.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="test-http-proxy", daemon=True)

    def __enter__(self) -> "HttpProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def _relay(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    try:
        while True:
            ready, _, _ = select.select([a, b], [], [], 30)
            if not ready:
                return
            for src in ready:
                data = src.recv(65536)
                if not data:
                    return
                (b if src is a else a).sendall(data)
    except OSError:
        return
    finally:
        b.close()
