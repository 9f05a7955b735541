"""A test double of the Kubernetes API server, for the unit tests of otel_oom/kube (the real one is
tests/e2e/kube's): the two calls the agent makes, answered as kube-apiserver answers them.

    api = ApiDouble(tls_dir=tmp_path)          # https with a CA of its own (ca.crt), or plain http
    api.script(503, 503)                       # the next two requests get 503, then normal answers
    api.script(("slow", 2.0))                  # the next one is handled, answered 2 s late
    api.pods["ns/name"] = {...}                # what GET /api/v1/namespaces/ns/pods/name returns
    api.events                                 # name -> the Event as POSTed (a second POST: 409)
    api.requests                               # (method, path, Authorization header, body)
    api.close()

Answers: POST /api/v1/namespaces/<ns>/events creates the Event by its name (201), or 409
AlreadyExists with a Status object; GET of a pod 200 or 404; a scripted status answers a Status
object with that code; ("slow", s) handles the request normally and answers s seconds late;
("close",) closes the connection without an answer.
"""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional, Union

Answer = Union[int, tuple]


def make_ca_and_server_cert(d: Path, host: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """(ca.crt, server.crt, server.key) made with openssl for `host` (an IP address)."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    ca_key, ca, key, csr, crt = (d / n for n in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt"))
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", "1",
        "-subj", "/CN=otel-oom-test-ca")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=kube-apiserver")
    ext = d / "ext.cnf"
    ext.write_text(f"subjectAltName=IP:{host}\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-out", str(crt),
        "-days", "1", "-extfile", str(ext))
    return ca, crt, key


def status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


class ApiDouble:
    def __init__(self, tls_dir: Optional[Path] = None) -> None:
        self.events: dict[str, dict] = {}
        self.pods: dict[str, dict] = {}
        self.requests: list[tuple[str, str, str, Any]] = []
        self._script: deque[Answer] = deque()
        self._lock = threading.Lock()
        self.ca: Optional[Path] = None
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                double._handle(self, "POST")

            def do_GET(self) -> None:  # noqa: N802
                double._handle(self, "GET")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.scheme = "http"
        if tls_dir is not None:
            import ssl

            self.ca, crt, key = make_ca_and_server_cert(tls_dir)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(crt), str(key))
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="kube-api-double", daemon=True)
        self._thread.start()

    def script(self, *answers: Answer) -> None:
        with self._lock:
            self._script.extend(answers)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def posts(self) -> list[tuple[str, str, str, Any]]:
        return [r for r in self.requests if r[0] == "POST"]

    # ---- the server's side ------------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        with self._lock:
            self.requests.append((method, h.path, h.headers.get("Authorization", ""), body))
            answer = self._script.popleft() if self._script else None
        delay = 0.0
        if isinstance(answer, tuple) and answer[0] == "close":
            h.close_connection = True
            h.connection.close()
            return
        if isinstance(answer, tuple) and answer[0] == "slow":
            delay = float(answer[1])
        elif isinstance(answer, int):
            return self._send(h, answer, status(answer, "Scripted", f"scripted answer {answer}"))
        code, doc = self._answer(method, h.path, body)
        if delay:
            time.sleep(delay)
        try:
            self._send(h, code, doc)
        except OSError:
            pass  # the client gave up waiting

    def _answer(self, method: str, path: str, body: Any) -> tuple[int, dict]:
        parts = path.strip("/").split("/")   # api v1 namespaces <ns> events|pods [<name>]
        if len(parts) < 5 or parts[:3] != ["api", "v1", "namespaces"]:
            return 404, status(404, "NotFound", f"the server could not find the requested resource {path}")
        ns, kind = parts[3], parts[4]
        if method == "POST" and kind == "events" and len(parts) == 5:
            name = body["metadata"]["name"]
            with self._lock:
                if name in self.events:
                    return 409, status(409, "AlreadyExists", f'events "{name}" already exists')
                self.events[name] = body
            return 201, body
        if method == "GET" and kind == "pods" and len(parts) == 6:
            pod = self.pods.get(f"{ns}/{parts[5]}")
            if pod is None:
                return 404, status(404, "NotFound", f'pods "{parts[5]}" not found')
            return 200, pod
        return 405, status(405, "MethodNotAllowed", "not served by the double")

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, code: int, doc: dict) -> None:
        data = json.dumps(doc).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)


def openssl_available() -> bool:
    return any(os.access(os.path.join(p, "openssl"), os.X_OK) for p in os.environ.get("PATH", "").split(os.pathsep))
