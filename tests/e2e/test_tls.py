"""TLS, mutual TLS and auth headers between the real agent and a real OTLP receiver, with real OOM kills.

Certificates are made per test with `make_test_pki()`. The agent is configured only through the
standard OTEL_EXPORTER_OTLP_* variables. A wrong CA must not lose the kill: it waits in the spool,
the failures are counted, and a restart with the right CA delivers it. Header values are secrets:
they reach the collector and never the agent's own log, even at debug level.
"""
from __future__ import annotations

import re
import subprocess
import sys

import grpc
import pytest
from conftest import REPO, agent_env, require_root_bpf, require_tool

from otel_oom.trigger import trigger_oom
from testing.otlp_receiver import OtlpGrpcReceiver, OtlpHttpReceiver, make_test_pki

MiB = 1 << 20
pytestmark = pytest.mark.root


@pytest.fixture
def pki(tmp_path):
    require_root_bpf()
    require_tool("openssl")
    return make_test_pki(tmp_path / "pki")


@pytest.fixture
def receivers():
    made = []

    def make(cls=OtlpGrpcReceiver, **kw):
        r = cls(**kw).start()
        made.append(r)
        return r

    yield make
    for r in made:
        r.stop()


def _wait_pid(receiver, pid: int, timeout: float = 30.0) -> dict:
    receiver.wait_for_logs(lambda recs: any(r["attributes"].get("process.pid") == pid for r in recs), timeout)
    return next(r for r in receiver.log_records() if r["attributes"].get("process.pid") == pid)


def _kill() -> int:
    return trigger_oom(limit_bytes=16 * MiB).victim_pid


@pytest.mark.parametrize("cls, protocol", [(OtlpGrpcReceiver, "grpc"), (OtlpHttpReceiver, "http/protobuf")])
@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
def test_kill_delivered_over_tls_and_mutual_tls(cls, protocol, mutual, pki, receivers, start_agent):
    rx = receivers(cls, tls=pki.server_tls(mutual=mutual))
    assert rx.endpoint.startswith("https://127.0.0.1:")
    env = {"OTEL_EXPORTER_OTLP_PROTOCOL": protocol, "OTEL_EXPORTER_OTLP_CERTIFICATE": pki.ca_cert}
    if mutual:
        env.update(OTEL_EXPORTER_OTLP_CLIENT_KEY=pki.client_key, OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE=pki.client_cert)
    agent = start_agent([], rx.endpoint, **env)
    assert f"OTLP {protocol} to https://127.0.0.1:{rx.port}" in agent.stderr
    pid = _kill()
    rec = _wait_pid(rx, pid)
    assert rec["attributes"]["oom.victim.cgroup.path"].startswith("/otel-oom-trigger-")
    logs = [r for r in rx.requests if r["signal"] == "logs" and r["fault"] is None]
    assert logs and all(r["peer_cn"] == ("otel-oom-client" if mutual else None) for r in logs)
    rx.wait_for_metric("oom.kills", lambda pts: sum(p["value"] for p in pts) >= 1, 20)
    assert agent.stop() == 0
    assert "Traceback" not in agent.stderr


def test_wrong_ca_keeps_the_kill_counts_failures_and_the_fixed_ca_delivers_it(pki, tmp_path, receivers,
                                                                              start_agent):
    rx = receivers(tls=pki.server_tls())
    metrics_rx = receivers()  # plaintext, so the failure count can be read while TLS to rx fails
    other = make_test_pki(tmp_path / "other-pki")
    spool = tmp_path / "spool"
    env = {"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": metrics_rx.endpoint,
           "OTEL_EXPORTER_OTLP_TIMEOUT": "2"}
    wrong = start_agent([f"--spool-dir={spool}"], rx.endpoint, OTEL_EXPORTER_OTLP_CERTIFICATE=other.ca_cert, **env)
    pid = _kill()
    metrics_rx.wait_for_metric("otel_oom.export.failures",
                               lambda pts: any(p["attributes"].get("signal") == "logs" and p["value"] >= 1
                                               for p in pts), 30)
    assert re.search(r"collector did not accept \d+ OOM event", wrong.stderr), wrong.stderr
    assert not any(r["attributes"].get("process.pid") == pid for r in rx.log_records())
    assert not any(r["signal"] == "logs" for r in rx.requests), "a TLS request passed with an untrusted CA"
    assert wrong.stop() == 0
    assert "stay in the spool" in wrong.stderr

    fixed = start_agent([f"--spool-dir={spool}"], rx.endpoint, OTEL_EXPORTER_OTLP_CERTIFICATE=pki.ca_cert, **env)
    rec = _wait_pid(rx, pid)
    assert rec["attributes"]["oom.recovered"] is False  # from the spool, not rebuilt from the kernel log
    assert fixed.stop() == 0
    assert "Traceback" not in wrong.stderr + fixed.stderr


@pytest.mark.parametrize("cls, protocol", [(OtlpGrpcReceiver, "grpc"), (OtlpHttpReceiver, "http/protobuf")])
def test_auth_header_reaches_the_collector_and_never_the_log(cls, protocol, receivers, start_agent):
    require_root_bpf()
    rx = receivers(cls)
    # a few refused exports first, so the error paths log too
    rx.fail_with(grpc.StatusCode.UNAVAILABLE if cls is OtlpGrpcReceiver else 503, count=2, signal="logs")
    agent = start_agent(["--log-level=debug", "--console"], rx.endpoint,
                        OTEL_EXPORTER_OTLP_PROTOCOL=protocol, OTEL_EXPORTER_OTLP_TIMEOUT="2",
                        OTEL_EXPORTER_OTLP_HEADERS="authorization=Bearer%20s3cr3t,x-tenant=t1")
    pid = _kill()
    _wait_pid(rx, pid, 60)
    logs_md = rx.metadata("logs")
    assert logs_md and all(md.get("authorization") == "Bearer s3cr3t" and md.get("x-tenant") == "t1"
                           for md in logs_md)
    assert all(md.get("authorization") == "Bearer s3cr3t" for md in rx.metadata("metrics"))
    assert agent.stop() == 0
    out = (agent.stderr + agent.stdout).lower()
    assert "DEBUG" in agent.stderr  # debug logging really was on
    assert "s3cr3t" not in out and "bearer" not in out and "authorization" not in out


def test_a_bad_header_setting_is_one_line_without_the_value(tmp_path):
    require_root_bpf()
    r = subprocess.run([sys.executable, "-m", "otel_oom", "run", f"--spool-dir={tmp_path}"], cwd=REPO,
                       env=agent_env(OTEL_EXPORTER_OTLP_HEADERS="authorization=ok,s3cr3t-without-equals"),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("otel-oom: error: ")]
    assert len(errors) == 1 and "OTEL_EXPORTER_OTLP_HEADERS item 2" in errors[0], r.stderr
    assert "s3cr3t" not in r.stderr and "Traceback" not in r.stderr
