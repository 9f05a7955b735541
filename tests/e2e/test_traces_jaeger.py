"""--traces against a real Jaeger (all-in-one v1.76 built from the Go module proxy, tools/jaeger/build.sh):
one OOM episode in a throwaway memory cgroup, for real (pressure near the limit, then the kernel's
OOM kill, then the victim's memory back), arrives as one span in Jaeger's query API with the
pressure, the kill and the reclaim as span events, and every log record of the episode at the
OTLP receiver carries that trace's and span's ids (the log -> trace jump)."""
from __future__ import annotations

import pytest
from conftest import require

from testing import jaeger
from testing.around import MemoryHolder, wait_killed
from testing.otlp_receiver import OtlpGrpcReceiver

MiB = 1 << 20
pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def jaeger_binary():
    try:
        return jaeger.build()  # cached by make test-tools; built here when missing
    except jaeger.JaegerError as e:
        require(False, f"no Jaeger: {e}")


def test_an_oom_episode_is_one_span_in_jaeger_and_its_log_records_point_at_it(jaeger_binary, start_agent):
    with OtlpGrpcReceiver() as rx, jaeger.Jaeger(jaeger_binary) as j:
        start_agent(["--traces", "--pressure-clear-seconds=2"], rx.endpoint,
                    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=j.otlp_grpc_endpoint)
        with MemoryHolder(limit_bytes=64 * MiB, hold_bytes=60 * MiB) as h:
            h.start()
            h.wait_held()
            rx.wait_for_logs(lambda recs: any(r["event_name"] == "oom.pressure" and
                                              r["attributes"].get("oom.memcg.path") == h.path for r in recs), 30)
            h.grow()
            assert h.proc is not None
            wait_killed(h.proc)
            recs = rx.wait_for_logs(lambda recs: any(r["event_name"] == "oom.reclaim" and
                                                     r["attributes"].get("process.pid") == h.pid for r in recs), 30)
        mine = [r for r in recs if r["attributes"].get("oom.memcg.path") == h.path
                or r["attributes"].get("process.pid") == h.pid]
        kill = next(r for r in mine if r["event_name"] == "oom.kill")
        trace_id, span_id = kill["trace_id"], kill["span_id"]
        assert len(trace_id) == 32 and trace_id != "0" * 32 and len(span_id) == 16
        assert {(r["trace_id"], r["span_id"]) for r in mine} == {(trace_id, span_id)}
        assert {r["event_name"] for r in mine} >= {"oom.pressure", "oom.kill", "oom.reclaim"}

        trace = j.wait_for_trace(trace_id, lambda t: len(t["spans"]) >= 1, timeout=90)
        (span,) = trace["spans"]
        assert span["spanID"] == span_id and span["operationName"] == "oom.episode"
        tags = {t["key"]: t["value"] for t in span["tags"]}
        assert tags["oom.memcg.path"] == h.path and tags["oom.episode.outcome"] == "kill"
        assert tags["oom.episode.kills"] == 1 and tags["oom.episode.ended_by"] == "reclaimed"
        assert tags.get("otel.status_code") == "ERROR" or tags.get("error") is True
        events = [{f["key"]: f["value"] for f in log["fields"]} for log in span["logs"]]
        names = [e.get("event") for e in events]
        assert names == ["oom.pressure.start", "oom.kill", "oom.reclaim"]
        assert next(e for e in events if e.get("event") == "oom.kill")["process.pid"] == h.pid
        # the span runs from the pressure start to the reclaim
        pressure = next(r for r in mine if r["event_name"] == "oom.pressure")
        reclaim = next(r for r in mine if r["event_name"] == "oom.reclaim")
        assert abs(span["startTime"] - pressure["time_unix_nano"] / 1000) <= 1  # Jaeger keeps microseconds
        assert abs(span["startTime"] + span["duration"] - reclaim["time_unix_nano"] / 1000) <= 2
        assert pressure["attributes"]["oom.pressure.state"] == "start" and span["duration"] > 0
        process = trace["processes"][span["processID"]]
        assert process["serviceName"] == "otel-oom"
