"""One HTTP(S) connection to the collector for the http/protobuf transport: TLS from the OTLP
certificate variables, the proxy the environment names, keep-alive, an answer read up to a bound.

The standard library's `http.client` rather than requests: one POST to one URL needs none of
requests' pooling, redirects, cookies or content decoding, and requests with urllib3, idna and
charset_normalizer was ~8 MiB of the idle agent's memory (bench/report.json, idle_rss_mib_http).

TLS: the CA file of OTEL_EXPORTER_OTLP[_<SIGNAL>]_CERTIFICATE, else the system's CAs (as OpenSSL
finds them: SSL_CERT_FILE / SSL_CERT_DIR are honoured); a client certificate and key when given.
A proxy (env.SignalSettings.proxy, from HTTPS_PROXY / HTTP_PROXY / ALL_PROXY and NO_PROXY) is an
http:// proxy: an https:// collector is reached through a CONNECT tunnel, an http:// one by
asking the proxy for the absolute URL.
"""
from __future__ import annotations

import base64
import http.client
import socket
import ssl
from dataclasses import dataclass
from typing import Optional, Union

from ..urls import Url
from .env import SignalSettings

Connection = Union[http.client.HTTPConnection, http.client.HTTPSConnection]
# what a connection the collector (or a proxy) closed while it was idle raises on its next request
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


@dataclass(frozen=True)
class Answer:
    status: int
    reason: str
    retry_after: Optional[str]
    content: bytes      # at most `limit` + 1 bytes: more than `limit` means it was cut


def tls_context(s: SignalSettings) -> ssl.SSLContext:
    """Raises ssl.SSLError or OSError for an unusable file (the caller reports it per export)."""
    context = ssl.create_default_context(cafile=s.certificate or None)
    if s.client_certificate:
        context.load_cert_chain(s.client_certificate, s.client_key or None)
    return context


def _basic(url: Url) -> dict[str, str]:
    user, password = url.userinfo()
    if user is None:
        return {}
    token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
    return {"Proxy-Authorization": f"Basic {token}"}


def _raise_tls_alert(conn: Connection, error: OSError) -> None:
    """A TLS server that refuses us (no client certificate, say) sends an alert and closes: when our
    request fails on the closed socket, the alert waiting there is the reason to report."""
    sock = conn.sock
    if isinstance(sock, ssl.SSLSocket):
        try:
            sock.settimeout(1.0)
            sock.recv(1)
        except ssl.SSLError as alert:
            raise alert from error
        except OSError:
            pass


class HttpConnection:
    """`post` from one thread at a time (the sender's); `close` from any."""

    def __init__(self, s: SignalSettings) -> None:
        self.url = s.endpoint
        self.proxy = s.proxy
        self._target = (s.endpoint.path or "/") + (f"?{s.endpoint.query}" if s.endpoint.query else "")
        self._context: Optional[ssl.SSLContext] = None
        self._context_error: Optional[BaseException] = None
        if s.endpoint.scheme == "https":
            try:
                self._context = tls_context(s)
            except (ssl.SSLError, OSError) as e:
                self._context_error = e
        self._conn: Optional[Connection] = None   # kept alive between posts
        self._busy: Optional[Connection] = None   # the one a post is using: `close` cuts it

    def post(self, body: bytes, headers: dict[str, str], timeout_s: float, limit: int) -> Answer:
        """One POST; raises what http.client, ssl or the socket raise (the caller tells them apart)."""
        if self._context_error is not None:
            raise self._context_error
        reused = self._conn is not None
        try:
            return self._post(body, headers, timeout_s, limit)
        except _STALE:
            if not reused:
                raise
        # the kept-alive connection had been closed while idle: once more on a new one
        return self._post(body, headers, timeout_s, limit)

    def _post(self, body: bytes, headers: dict[str, str], timeout_s: float, limit: int) -> Answer:
        conn = self._conn or self._connect(timeout_s)
        self._conn, self._busy = None, conn   # put back only after a whole answer was read
        conn.timeout = timeout_s
        if conn.sock is not None:
            conn.sock.settimeout(timeout_s)
        try:
            target = self._target
            extra: dict[str, str] = {}
            if self.proxy is not None and self.url.scheme == "http":
                target, extra = self.url.without_credentials, _basic(self.proxy)
            try:
                conn.request("POST", target, body=body, headers={**headers, **extra})
            except (BrokenPipeError, ConnectionResetError) as e:
                _raise_tls_alert(conn, e)
                raise
            r = conn.getresponse()
            content = r.read(limit + 1)
            whole = len(content) <= limit and not r.will_close and r.isclosed()
        except BaseException:
            conn.close()
            raise
        finally:
            self._busy = None
        if whole:
            self._conn = conn
        else:
            conn.close()
        return Answer(r.status, r.reason or "", r.getheader("Retry-After"), content)

    def _connect(self, timeout_s: float) -> Connection:
        url, proxy = self.url, self.proxy
        host, port = url.host, url.port
        if proxy is None:
            if url.scheme == "https":
                return http.client.HTTPSConnection(host, port, timeout=timeout_s, context=self._context)
            return http.client.HTTPConnection(host, port, timeout=timeout_s)
        if url.scheme == "https":
            conn = http.client.HTTPSConnection(proxy.host, proxy.port or 80, timeout=timeout_s, context=self._context)
            conn.set_tunnel(host, port or 443, headers=_basic(proxy))  # TLS checks the collector's name
            return conn
        return http.client.HTTPConnection(proxy.host, proxy.port or 80, timeout=timeout_s)

    def close(self) -> None:
        """Also cuts a post in flight (it raises), as closing a gRPC channel cancels its RPC."""
        for conn in (self._conn, self._busy):
            if conn is not None:
                if conn.sock is not None:
                    try:
                        conn.sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading it; close() alone does not
                    except OSError:
                        pass
                conn.close()
        self._conn = None
