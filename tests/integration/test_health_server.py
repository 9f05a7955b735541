"""HealthServer over real HTTP: probes, readiness reasons, /metrics, listen parsing, and a real
Prometheus scraping it (through testing/prometheus_server.py)."""
from __future__ import annotations

import logging
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request

from conftest import require
from prometheus_client import CollectorRegistry, Counter

from otel_oom.health import HealthServer
from testing.prometheus_server import PrometheusServer


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), e.headers.get("Content-Type", "")


def test_real_prometheus_scrapes_the_health_server():
    require(shutil.which("prometheus") is not None, "needs the `prometheus` binary (apt-get install prometheus)")
    reg = CollectorRegistry()
    c = Counter("oom_kills", "OOM kills", ["k8s_pod_uid"], registry=reg)
    c.labels("0f5e6c2a-1111-4222-8333-944455556666").inc(7)
    srv = HealthServer("127.0.0.1:0", lambda: (True, "ok"), reg)
    try:
        with PrometheusServer([f"127.0.0.1:{srv.port}"]) as prom:
            result = prom.wait_for('oom_kills_total{job="otel-oom"}')
            assert len(result) == 1, prom.log_text()
            assert result[0]["metric"]["k8s_pod_uid"] == "0f5e6c2a-1111-4222-8333-944455556666"
            assert float(result[0]["value"][1]) == 7.0
            up = prom.query('up{job="otel-oom"}')
            assert float(up[0]["value"][1]) == 1.0
    finally:
        srv.close()


def test_half_sent_requests_hold_neither_threads_nor_the_endpoint(caplog):
    # 300 connections that send half a request and wait: before, 300 threads, held forever
    from otel_oom import health

    srv = HealthServer("127.0.0.1:0", lambda: (True, "ok"))
    socks: list[socket.socket] = []
    try:
        base = threading.active_count()
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", srv.port))
            s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n")  # never the blank line that ends it
            socks.append(s)
        deadline = time.monotonic() + 3
        while srv._server.refused < 300 - health.MAX_CONNECTIONS and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv._server.refused == 300 - health.MAX_CONNECTIONS
        assert threading.active_count() - base <= health.MAX_CONNECTIONS
        # the held ones time out, and the endpoint answers again
        deadline = time.monotonic() + health.REQUEST_TIMEOUT_S + 3
        while True:
            try:
                if get(f"http://127.0.0.1:{srv.port}/healthz")[:2] == (200, "ok\n"):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "endpoint still exhausted after the request timeout"
            time.sleep(0.2)
        assert threading.active_count() - base <= health.MAX_CONNECTIONS
    finally:
        for s in socks:
            s.close()
        srv.close()
    assert "Traceback" not in caplog.text


def test_clients_that_disconnect_early_cost_no_traceback(capfd, caplog):
    srv = HealthServer("127.0.0.1:0", lambda: (True, "ok"))
    try:
        for i in range(330):
            s = socket.create_connection(("127.0.0.1", srv.port))
            if i % 3 == 0:
                s.sendall(b"GET /readyz HTTP/1.1\r\n")  # then gone mid-request
            elif i % 3 == 1:
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")  # gone before the answer
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
            s.close()
        time.sleep(0.5)
        assert get(f"http://127.0.0.1:{srv.port}/healthz")[:2] == (200, "ok\n")
    finally:
        srv.close()
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err + caplog.text
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) <= 2
