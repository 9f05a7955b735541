"""HealthServer over real HTTP: probes, readiness reasons, /metrics, listen parsing, and a real
Prometheus scraping it (through testing/prometheus_server.py)."""
from __future__ import annotations

import socket
import threading
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from otel_oom.errors import UsageError
from otel_oom.health import HealthServer, parse_listen


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), e.headers.get("Content-Type", "")


@pytest.mark.parametrize("text,expected", [
    ("0.0.0.0:9464", ("0.0.0.0", 9464)),
    ("127.0.0.1:0", ("127.0.0.1", 0)),
    (":9464", ("", 9464)),
    ("[::1]:8080", ("::1", 8080)),
    ("[::]:1", ("::", 1)),
    ("[10.1.2.3]:9464", ("10.1.2.3", 9464)),  # what --listen=[$(POD_IP)]:9464 gives on an IPv4 pod
    ("localhost:65535", ("localhost", 65535)),
])
def test_parse_listen_accepts(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["9464", "::1:9464", "[::1]9464", "[::1]", "[nothost]:80", "host:", "host:http",
                                  "host:65536", "host:-1", "", ":"])
def test_parse_listen_rejects_with_one_clear_line(text):
    with pytest.raises(ValueError) as e:
        parse_listen(text)
    assert isinstance(e.value, UsageError)  # the CLI prints it as one line, exit code 2
    assert "HOST:PORT" in str(e.value) and "\n" not in str(e.value)


def test_healthz_readyz_and_404_without_registry():
    state = {"ok": False, "reason": "probes not attached"}
    srv = HealthServer("127.0.0.1:0", lambda: (state["ok"], state["reason"]))
    try:
        assert srv.port > 0
        base = f"http://127.0.0.1:{srv.port}"
        assert get(f"{base}/healthz")[:2] == (200, "ok\n")
        assert get(f"{base}/readyz")[:2] == (503, "probes not attached\n")
        state.update(ok=True, reason="ok")
        assert get(f"{base}/readyz")[:2] == (200, "ok\n")
        assert get(f"{base}/metrics")[0] == 404
        assert get(f"{base}/nope")[0] == 404
    finally:
        srv.close()
    # closed: the port no longer answers
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()


def test_readiness_callback_exception_is_503_not_a_crash():
    def broken():
        raise RuntimeError("boom")

    srv = HealthServer("127.0.0.1:0", broken)
    try:
        code, body, _ = get(f"http://127.0.0.1:{srv.port}/readyz")
        assert code == 503 and "boom" in body
        assert get(f"http://127.0.0.1:{srv.port}/healthz")[0] == 200
    finally:
        srv.close()


def test_metrics_from_registry():
    reg = CollectorRegistry()
    c = Counter("oom_kills", "OOM kills", ["oom_constraint"], registry=reg)
    c.labels("memcg").inc(3)
    srv = HealthServer("127.0.0.1:0", lambda: (True, "ok"), reg)
    try:
        code, body, ctype = get(f"http://127.0.0.1:{srv.port}/metrics")
        assert code == 200 and ctype.startswith("text/plain")
        assert 'oom_kills_total{oom_constraint="memcg"} 3.0' in body
    finally:
        srv.close()


def test_ipv6_loopback():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this kernel")
    try:
        srv = HealthServer("[::1]:0", lambda: (True, "ok"))
    except Exception as e:  # noqa: BLE001 - IPv6 disabled on the loopback
        pytest.skip(f"no IPv6 loopback: {e}")
    try:
        assert get(f"http://[::1]:{srv.port}/healthz")[0] == 200
    finally:
        srv.close()


def test_port_in_use_is_one_line_error():
    first = HealthServer("127.0.0.1:0", lambda: (True, "ok"))
    try:
        with pytest.raises(Exception) as e:
            HealthServer(f"127.0.0.1:{first.port}", lambda: (True, "ok"))
        assert "cannot listen on" in str(e.value) and "--listen" in str(e.value)
    finally:
        first.close()


def test_concurrent_probes_do_not_block_each_other():
    gate = threading.Event()

    def slow():
        gate.wait(5)
        return True, "ok"

    srv = HealthServer("127.0.0.1:0", slow)
    try:
        t = threading.Thread(target=get, args=(f"http://127.0.0.1:{srv.port}/readyz",))
        t.start()
        # a readiness call in flight must not stall liveness
        assert get(f"http://127.0.0.1:{srv.port}/healthz")[0] == 200
        gate.set()
        t.join(5)
    finally:
        srv.close()


