"""The API server over HTTPS with the standard library: one kept-alive connection per client.

`Connection` (made once at start by settings.py) says where and how: the server's address, the
CA to trust, and the credential, a bearer token or a client certificate. A token named by a file is
read again whenever the file changes: the kubelet rotates a pod's projected service-account token
(about every hour, and it expires), as client-go re-reads it. `ApiClient.request` sends one request
and returns the status and the decoded JSON; no answer at all (refused, timed out, TLS, a reset)
raises `ApiUnreachable`. Retries are the callers' (pod_events.py, kubelet_check.py). Each thread
has its own client: http.client connections are not shared between threads.
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import tempfile
import threading
from dataclasses import dataclass
from typing import Any, Optional

from .. import __version__

USER_AGENT = f"otel-oom/{__version__}"
MAX_BODY = 4 << 20  # a Pod is a few KiB; an answer this large is not one the agent asked for


class ApiUnreachable(Exception):
    """No HTTP answer: `kind` is timeout, refused, tls or connection (for counting and logging)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


@dataclass(frozen=True)
class Connection:
    scheme: str                      # https; http only for a local proxy or a test double
    host: str
    port: int
    base_path: str = ""              # a kubeconfig's server URL may carry a path prefix
    source: str = "in-cluster"       # where this came from, for messages: in-cluster or the kubeconfig's path
    ca_file: Optional[str] = None
    ca_data: Optional[str] = None    # PEM
    insecure: bool = False           # kubeconfig insecure-skip-tls-verify
    server_name: Optional[str] = None  # kubeconfig tls-server-name
    token: Optional[str] = None
    token_file: Optional[str] = None
    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    cert_data: Optional[str] = None  # PEM
    key_data: Optional[str] = None   # PEM

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.base_path}"

    def ssl_context(self) -> Optional[ssl.SSLContext]:
        """The TLS context (None for http); raises ssl.SSLError / OSError for unusable files."""
        if self.scheme != "https":
            return None
        ctx = ssl.create_default_context(cafile=self.ca_file, cadata=self.ca_data)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_file or self.cert_data:
            _load_client_cert(ctx, self)
        return ctx

    def secrets(self) -> list[str]:
        """What a log line must never show (the first token; a rotated one is never logged either)."""
        token = self.token or (read_token(self.token_file) if self.token_file else None)
        return [token] if token else []


def _load_client_cert(ctx: ssl.SSLContext, c: Connection) -> None:
    # ssl loads a certificate and key from files only: PEM given inline goes through a private
    # temporary file, removed as soon as it is loaded
    with tempfile.TemporaryDirectory(prefix="otel-oom-kube-") as d:
        cert = c.cert_file
        key = c.key_file
        if c.cert_data:
            cert = os.path.join(d, "client.crt")
            _write_private(cert, c.cert_data)
        if c.key_data:
            key = os.path.join(d, "client.key")
            _write_private(key, c.key_data)
        assert cert is not None
        ctx.load_cert_chain(cert, key)


def _write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def read_token(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        token = f.read(64 << 10).strip()
    if not token or any(c.isspace() for c in token):
        raise ValueError("empty or not a bearer token")
    return token


class _TokenFile:
    """The token in `path`, read again when the file changes (projected tokens are rotated)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._key: Optional[tuple[int, int, int]] = None
        self._token = ""
        self.problem: Optional[str] = None  # the last read failed: the previous token is used

    def get(self) -> str:
        try:
            st = os.stat(self.path)
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
            if key != self._key:
                self._token = read_token(self.path)
                self._key = key
            self.problem = None
        except (OSError, ValueError) as e:
            self.problem = f"{type(e).__name__}: {e}"
        return self._token


@dataclass(frozen=True)
class Response:
    status: int
    body: Any            # the decoded JSON (a dict for every Kubernetes answer), or None
    message: str = ""    # the Status object's message, for errors

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class ApiClient:
    """Requests to one API server from one thread; `timeout` seconds for each."""

    def __init__(self, conn: Connection, timeout: float = 5.0) -> None:
        self.conn = conn
        self.timeout = timeout
        self._ctx = conn.ssl_context()
        self._http: Optional[http.client.HTTPConnection] = None
        self._token_file = _TokenFile(conn.token_file) if conn.token_file else None
        self._owner: Optional[int] = None

    @property
    def token_problem(self) -> Optional[str]:
        return self._token_file.problem if self._token_file else None

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def _headers(self, body: Optional[bytes]) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        token = self._token_file.get() if self._token_file else self.conn.token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if body is not None:
            headers["Content-Type"] = "application/json"
        return headers

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        if self._http is None:
            c = self.conn
            if c.scheme == "https":
                self._http = _Https(c.host, c.port, timeout=timeout, context=self._ctx, server_name=c.server_name)
            else:
                self._http = http.client.HTTPConnection(c.host, c.port, timeout=timeout)
        self._http.timeout = timeout
        if self._http.sock is not None:
            self._http.sock.settimeout(timeout)
        return self._http

    def request(self, method: str, path: str, body: Optional[dict] = None,
                timeout: Optional[float] = None) -> Response:
        """One request; `path` below the server's base path, e.g. /api/v1/namespaces/x/pods/y."""
        me = threading.get_ident()
        assert self._owner in (None, me), "an ApiClient is used from one thread only"
        self._owner = me
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        t = self.timeout if timeout is None else timeout
        # a kept-alive connection the server closed meanwhile fails at once: one more try on a new one
        for attempt in (1, 2):
            reused = self._http is not None and self._http.sock is not None
            try:
                conn = self._connect(t)
                conn.request(method, self.conn.base_path + path, body=data, headers=self._headers(data))
                r = conn.getresponse()
                raw = r.read(MAX_BODY + 1)
                if r.will_close:
                    self.close()
                return _response(r.status, raw, r.getheader("Content-Type") or "")
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                self.close()
                if attempt == 1 and reused:
                    continue
                raise ApiUnreachable("connection", _text(e)) from None
            except (socket.timeout, TimeoutError) as e:
                self.close()
                raise ApiUnreachable("timeout", _text(e) or f"no answer within {t:g} s") from None
            except ssl.SSLError as e:
                self.close()
                raise ApiUnreachable("tls", _text(e)) from None
            except ConnectionRefusedError as e:
                self.close()
                raise ApiUnreachable("refused", _text(e)) from None
            except (OSError, http.client.HTTPException) as e:
                self.close()
                raise ApiUnreachable("connection", _text(e)) from None
        raise AssertionError("unreachable")


class _Https(http.client.HTTPSConnection):
    """HTTPS whose certificate is checked against `server_name` when given (kubeconfig
    tls-server-name: the server's address is not a name its certificate holds)."""

    def __init__(self, host: str, port: int, *, timeout: float, context: Optional[ssl.SSLContext],
                 server_name: Optional[str]) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._server_name = server_name or host
        self._tls = context or ssl.create_default_context()

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._tls.wrap_socket(self.sock, server_hostname=self._server_name)


def _text(e: BaseException) -> str:
    return " ".join(str(e).split())[:200] or type(e).__name__


def _response(status: int, raw: bytes, content_type: str) -> Response:
    if len(raw) > MAX_BODY:
        return Response(status, None, f"answer larger than {MAX_BODY} bytes")
    body: Any = None
    if raw and "json" in content_type:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
    message = ""
    if isinstance(body, dict) and body.get("kind") == "Status":
        message = str(body.get("message") or body.get("reason") or "")[:300]
    elif status >= 300 and raw:
        message = raw[:200].decode("utf-8", "replace").strip()
    return Response(status, body, message)
