"""Start-up, for real: `ready` comes before the OTel SDK, a kill caught before the export exists is
delivered, and the agent imports only what its configuration uses.

The speed itself is measured in bench/ (startup section), never asserted here: these tests check the
behaviour that makes it possible.
"""
from __future__ import annotations

import re
import time

import pytest

from otel_oom.trigger import trigger_oom
from testing.otlp_receiver import OtlpGrpcReceiver, OtlpHttpReceiver

MiB = 1 << 20
pytestmark = pytest.mark.root


def _imported(stderr: str) -> set[str]:
    """Every module the process imported, from PYTHONPROFILEIMPORTTIME's lines on stderr."""
    return {m.group(1) for m in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \| *([\w.]+)$", stderr, re.M)}


def _delivered(rcv, pid: int) -> bool:
    return any(r["attributes"].get("process.pid") == pid for r in rcv.log_records())


def test_a_kill_right_after_ready_is_stored_and_delivered_once_the_export_is_up(start_agent):
    with OtlpHttpReceiver() as rcv:
        agent = start_agent([], rcv.endpoint, OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf")
        kill = trigger_oom(limit_bytes=16 * MiB)  # as soon as the agent said `ready`
        caught_at = time.monotonic()
        deadline = time.monotonic() + 120
        while not _delivered(rcv, kill.victim_pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _delivered(rcv, kill.victim_pid), agent.stderr
        ready = agent.stderr.index(" ready in ")
        export = agent.stderr.index("export ready in ")
        assert ready < export  # the SDK and exporters came up after `ready`
        rec = next(r for r in rcv.log_records() if r["attributes"].get("process.pid") == kill.victim_pid)
        assert rec["event_name"] == "oom.kill" and rec["attributes"]["oom.victim.cgroup.path"] == kill.cgroup_path
        # and it was counted in oom.kills too (the pipeline's backlog while the metrics were not there)
        deadline = time.monotonic() + 120
        while not rcv.metric_points("oom.kills") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert any(p.get("value", 0) >= 1 for p in rcv.metric_points("oom.kills")), rcv.metric_points("oom.kills")
        print(f"\nkill caused {caught_at - agent.ready_at:.3f} s after ready; delivered")


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_only_the_modules_the_configuration_uses_are_imported(start_agent, tmp_path, protocol):
    no_runtimes = tmp_path / "host-root"  # a host without container runtimes: no CRI socket to ask
    no_runtimes.mkdir()
    receiver = OtlpHttpReceiver if protocol == "http/protobuf" else OtlpGrpcReceiver
    with receiver() as rcv:
        agent = start_agent([f"--runtime-root={no_runtimes}"], rcv.endpoint, OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
                            PYTHONPROFILEIMPORTTIME="1")
        kill = trigger_oom(limit_bytes=16 * MiB)  # the whole export path runs once
        deadline = time.monotonic() + 120
        while not _delivered(rcv, kill.victim_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _delivered(rcv, kill.victim_pid), agent.stderr[-3000:]
        assert agent.stop() == 0
    modules = _imported(agent.stderr)
    assert "otel_oom.agent" in modules and "opentelemetry.sdk.metrics" in modules  # the check sees imports
    assert "prometheus_client" not in modules and "opentelemetry.exporter.prometheus" not in modules
    # every signal goes through otel-oom's own transport: no SDK exporter, and no requests for HTTP
    assert "otel_oom.otlp.metric_exporter" in modules
    assert not any(m.startswith(("opentelemetry.exporter.otlp.proto.grpc", "opentelemetry.exporter.otlp.proto.http"))
                   for m in modules), sorted(m for m in modules if m.startswith("opentelemetry.exporter"))
    assert "requests" not in modules and "urllib3" not in modules
    if protocol == "http/protobuf":
        assert "grpc" not in modules, sorted(m for m in modules if m.startswith("grpc"))[:5]
        assert "otel_oom.otlp.http_connection" in modules
    else:
        assert "grpc" in modules and "otel_oom.otlp.http_connection" not in modules
