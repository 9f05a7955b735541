"""The agent's own HTTP endpoint: liveness (/healthz), readiness (/readyz) and Prometheus /metrics.

Served from a daemon thread so a slow or stuck client never holds up the pipeline; the
readiness callback is called once per /readyz request and must be cheap and thread-safe.
`HealthServer` is a `service.Service`: bound when made (so a bad --listen fails the start), served
from `start()` until `stop()`.
The endpoint may face anything that can reach it: at most `MAX_CONNECTIONS` are served at once
(more are closed at once, unanswered), a connection that does not send its request within
`REQUEST_TIMEOUT_S` is closed, and a client that goes away early costs a debug line, not a traceback.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional

from .errors import AgentError, UsageError
from .numbers import ascii_int
from .service import ServiceThread

log = logging.getLogger("otel_oom.health")


class ListenError(UsageError, ValueError):
    """A malformed --listen value: a ValueError for callers, one line on the CLI."""

Readiness = Callable[[], "tuple[bool, str]"]


def parse_listen(listen: str) -> tuple[str, int]:
    """"HOST:PORT", ":PORT" (all interfaces) or "[address]:PORT" -> (host, port).

    Brackets take an IPv4 address too, so a manifest can write `--listen=[$(POD_IP)]:9464` and work on
    IPv4, IPv6 and dual-stack clusters alike."""
    text = listen.strip()
    usage = (f"--listen must be HOST:PORT, :PORT or [IPv6]:PORT with a port from 0 to 65535, "
             f"e.g. 0.0.0.0:9464, :9464 or [::1]:9464; got {listen!r}")
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1:end + 2] != ":":
            raise ListenError(usage)
        host, port_text = text[1:end], text[end + 2:]
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ListenError(usage) from None
    else:
        host, sep, port_text = text.rpartition(":")
        # a bare IPv6 address without brackets is ambiguous ("::1:9464")
        if not sep or ":" in host:
            raise ListenError(usage)
    port = ascii_int(port_text) if port_text.isascii() and port_text.isdigit() else None  # no sign, no "²"
    if port is None or not 0 <= port <= 65535:
        raise ListenError(usage)
    return host, port


MAX_CONNECTIONS = 16      # probes and a scraper need one or two
# A connection's whole life, not each read: a socket timeout alone let a client that sends a byte
# every few seconds keep its slot for good, and 16 of them starved the kubelet's probes. A probe
# sends ~100 bytes at once and reads ~10; /metrics is a few kB.
REQUEST_TIMEOUT_S = 5.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    request_queue_size = 64  # accept fast and refuse by count, rather than let SYNs be dropped

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], family: int) -> None:
        self.address_family = family
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.refused = 0
        self.expired = 0
        self._deadlines: dict[Any, float] = {}  # open connection -> when it is cut
        self._deadlines_lock = threading.Lock()
        super().__init__(address, handler)

    def service_actions(self) -> None:
        """Run by serve_forever at each poll (0.1 s): cut the connections past their deadline. A
        shut-down socket ends the handler's blocked read at once, and its slot comes free."""
        now = time.monotonic()
        with self._deadlines_lock:
            late = [conn for conn, deadline in self._deadlines.items() if now >= deadline]
            for conn in late:
                del self._deadlines[conn]
        for conn in late:
            self.expired += 1
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # closed meanwhile

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.refused += 1
            if self.refused in (1, 100) or self.refused % 10000 == 0:
                log.warning("health endpoint: more than %d connections at once; refusing (%d so far)",
                            MAX_CONNECTIONS, self.refused)
            self.shutdown_request(request)
            return
        with self._deadlines_lock:
            self._deadlines[request] = time.monotonic() + REQUEST_TIMEOUT_S
        try:
            super().process_request(request, client_address)
        except Exception:
            self._forget(request)
            self.slots.release()
            raise

    def _forget(self, request: Any) -> None:
        with self._deadlines_lock:
            self._deadlines.pop(request, None)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._forget(request)
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that disconnects early or times out: not the agent's error, and never a traceback
        import sys

        log.debug("health endpoint: connection from %s ended: %r", client_address, sys.exc_info()[1])


class HealthServer:
    """/healthz: the process serves HTTP. /readyz: the agent's own verdict. /metrics: the registry."""

    name = "otel-oom-health"

    def __init__(self, listen: str, ready: Readiness, prometheus_registry: Optional[Any] = None,
                 start: bool = True) -> None:

        host, port = parse_listen(listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        if host == "":
            host = "0.0.0.0"
        self._ready = ready
        self._registry = prometheus_registry
        handler = self._make_handler()
        try:
            self._server = _Server((host, port), handler, family)
        except OSError as e:
            raise AgentError(f"cannot listen on {listen} for /healthz: {e.strerror} "
                             "(choose another --listen address or port)", e.errno) from None
        self.host = host
        self.port: int = self._server.server_address[1]
        self.thread = ServiceThread(self.name, lambda: self._server.serve_forever(poll_interval=0.1))
        self._closed = False
        if start:
            self.start()

    def _make_handler(self):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "otel-oom"
            sys_version = ""
            timeout = REQUEST_TIMEOUT_S  # each read or write; the server cuts the whole connection at the same age

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    self._send(200, b"ok\n")
                elif path == "/readyz":
                    try:
                        ok, reason = outer._ready()
                    except Exception as e:  # noqa: BLE001 - a broken check means not ready, never a crash
                        ok, reason = False, f"readiness check failed: {e}"
                    self._send(200 if ok else 503, (reason.replace("\n", " ") + "\n").encode("utf-8", "replace"))
                elif path == "/metrics" and outer._registry is not None:
                    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

                    try:
                        body = generate_latest(outer._registry)
                    except Exception as e:  # noqa: BLE001 - a broken collector answers 500, not a traceback
                        log.warning("/metrics failed: %s", e)
                        self._send(500, b"metrics unavailable\n")
                        return
                    self._send(200, body, CONTENT_TYPE_LATEST)
                else:
                    self._send(404, b"not found: try /healthz, /readyz or /metrics\n")

            def do_HEAD(self) -> None:  # noqa: N802
                self.do_GET()

            def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def log_message(self, fmt: str, *args: Any) -> None:
                # probes hit this every few seconds: keep them out of the agent's log
                log.debug("%s %s", self.address_string(), fmt % args)

        return Handler

    def serve_metrics(self, prometheus_registry: Any) -> None:
        """/metrics from now on (the agent builds its registry after `ready`)."""
        self._registry = prometheus_registry

    # ---- the service ---------------------------------------------------------------------------
    def start(self) -> None:
        if not self.thread.started:
            self.thread.start()

    def stop(self) -> None:
        self.thread.stopping = True
        if self.thread.started and not self._closed:
            self._server.shutdown()  # returns once serve_forever did

    def join(self, timeout: float) -> bool:
        done = self.thread.join(timeout)
        if not self._closed:
            self._closed = True
            self._server.server_close()
        return done

    def healthy(self) -> tuple[bool, str]:
        return self.thread.healthy()

    def close(self) -> None:
        self.stop()
        self.join(5.0)
