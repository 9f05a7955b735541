"""The http/protobuf transport's connection (otlp/http_connection.py) against HTTP/1.1 servers in
this process: one connection kept alive across exports, a new one when the collector closed the
idle one (no export lost to it), and `close` cutting an export that waits for an answer."""
from __future__ import annotations

import http.server
import socket
import threading

from otel_oom.otlp.env import resolve_otlp
from otel_oom.otlp.transport import transport

REQUEST = b"\x0a\x00"


class KeepAliveCollector:
    """An HTTP/1.1 test double of a collector: answers 200 to each POST and records from which client
    port it came; `close_idle` closes each connection after its first answer, as a collector's idle
    timeout does (without saying Connection: close); `hold` never answers."""

    def __init__(self, close_idle: bool = False, hold: bool = False) -> None:
        self.peers: list[int] = []
        self.arrived = threading.Event()
        self.release = threading.Event()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                fake.peers.append(self.client_address[1])
                fake.arrived.set()
                if hold:
                    fake.release.wait(60)
                    return
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                self.wfile.flush()
                if close_idle:
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def logs_transport(port: int, timeout: str = "10"):
    s = resolve_otlp({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                      "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_EXPORTER_OTLP_TIMEOUT": timeout})
    return transport(s.logs, "logs")


def test_one_connection_is_kept_alive_across_exports():
    c = KeepAliveCollector()
    t = logs_transport(c.port)
    try:
        assert [t.export(REQUEST, 10).outcome for _ in range(3)] == ["accepted"] * 3
        assert len(c.peers) == 3 and len(set(c.peers)) == 1
    finally:
        t.close()
        c.close()


def test_a_connection_the_collector_closed_while_idle_costs_no_export():
    c = KeepAliveCollector(close_idle=True)
    t = logs_transport(c.port)
    try:
        assert [t.export(REQUEST, 10).outcome for _ in range(3)] == ["accepted"] * 3
        assert len(c.peers) == 3 and len(set(c.peers)) == 3   # each on a new connection, none failed
    finally:
        t.close()
        c.close()


def test_close_cuts_an_export_waiting_for_its_answer():
    c = KeepAliveCollector(hold=True)
    t = logs_transport(c.port, timeout="120")
    got: list = []
    exporting = threading.Thread(target=lambda: got.append(t.export(REQUEST, 120)))
    try:
        exporting.start()
        assert c.arrived.wait(60)
        t.close()   # as the agent's shutdown does
        exporting.join(60)   # a hang guard: without the cut the export would wait its 120 s
        assert not exporting.is_alive() and got[0].outcome == "retry", got
    finally:
        c.close()
        exporting.join()
