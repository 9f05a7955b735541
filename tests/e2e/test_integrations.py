"""The agent's integration surfaces, for real: a Prometheus server scraping /metrics, the health
endpoints a DaemonSet probes, and the webhook, each around real OOM kills."""
from __future__ import annotations

import http.server
import json
import threading
import urllib.error
import urllib.request
import uuid

import pytest
from conftest import require_tool

from otel_oom.trigger import trigger_oom
from testing.otlp_receiver import free_port
from testing.prometheus_server import PrometheusServer

MiB = 1 << 20
pytestmark = pytest.mark.root


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_prometheus_scrapes_the_kill_count_after_a_real_kill(start_agent):
    require_tool("prometheus")
    port = free_port()
    start_agent(["--no-otlp", f"--listen=127.0.0.1:{port}", "--prometheus"])
    pod = str(uuid.uuid4())
    cid = uuid.uuid4().hex * 2
    with PrometheusServer(targets=[f"127.0.0.1:{port}"]) as prom:
        prom.wait_for('up{job="otel-oom"} == 1', timeout=90)
        query = 'oom_kills_total{oom_victim_pod_qos_class="besteffort",oom_constraint="memcg"}'
        before = sum(float(s["value"][1]) for s in prom.query(query))
        trigger_oom(limit_bytes=32 * MiB, cgroup=f"/kubepods/besteffort/pod{pod}/{cid}")
        series = prom.wait_for(f"sum({query}) >= {before + 1}", timeout=90)
        assert series
        # bounded labels only: a container id or pod uid would add a series per restart
        for s in prom.query("oom_kills_total"):
            assert not {"container_id", "k8s_pod_uid", "process_pid"} & set(s["metric"]), s["metric"]
        hooks = prom.wait_for('otel_oom_hooks_attached{oom_hook_role="victim"}', timeout=90)
        assert hooks[0]["metric"]["oom_hook"] in ("tp_btf", "tracepoint")
        rss = prom.wait_for('oom_victim_rss_bytes_count{oom_constraint="memcg"} >= 1', timeout=90)
        assert rss


def test_health_endpoints_follow_the_agent(start_agent):
    port = free_port()
    agent = start_agent(["--no-otlp", f"--listen=127.0.0.1:{port}"])
    assert _get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")
    status, body = _get(f"http://127.0.0.1:{port}/readyz")
    assert status == 200, body
    assert _get(f"http://127.0.0.1:{port}/metrics")[0] == 404  # no --prometheus
    assert agent.stop() == 0


def test_readyz_reports_attached_probes_with_otlp(start_agent):
    port = free_port()
    # a collector that is not there: the agent still starts, and is ready (delivery retries, not stuck yet)
    start_agent([f"--listen=127.0.0.1:{port}"], f"http://127.0.0.1:{free_port()}")
    status, body = _get(f"http://127.0.0.1:{port}/readyz")
    assert status == 200, body


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.headers.get("Content-Type"), json.loads(body)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_webhook_gets_one_message_per_kill(start_agent):
    _Hook.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        start_agent(["--no-otlp", f"--notify-webhook=http://127.0.0.1:{server.server_port}/hook"])
        kill = trigger_oom(limit_bytes=32 * MiB, comm=b"leaky\x1b[2J")
        deadline = threading.Event()
        for _ in range(100):
            if any(m["oom"].get("victim_pid") == kill.victim_pid for _, m in _Hook.received):
                break
            deadline.wait(0.1)
        msgs = [m for _, m in _Hook.received if m["oom"].get("victim_pid") == kill.victim_pid]
        assert len(msgs) == 1
        ctype, _ = _Hook.received[0]
        assert ctype.startswith("application/json")
        text = msgs[0]["text"]
        assert f"Killed process {kill.victim_pid}" in text
        assert "\x1b" not in text and "\\x1b[2J" in text  # a chat client never gets the raw escape
    finally:
        server.shutdown()
        server.server_close()
