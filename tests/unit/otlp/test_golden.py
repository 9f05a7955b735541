"""The direct encoder against what the SDK's encoder sent: golden requests made once by the code before
it (tests/fixtures/otlp/make_golden.py), for every record type with hostile strings, attribute limits,
and a spool that code left behind with records still waiting.

Compared as parsed messages, and re-serialized byte for byte (so no field the old path set, or the new
one adds, can hide). The one difference by design: `ObservedTimestamp` is the time of the request, so
the new requests are built with the golden's observed time; on the wire the field comes first."""
from __future__ import annotations

import json
import os
import shutil
import threading
from collections import Counter
from pathlib import Path

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource

from otel_oom import __version__
from otel_oom.delivery.sender import SpoolSender
from otel_oom.delivery.spool import Spool
from otel_oom.otlp.env import resolve_otlp
from otel_oom.otlp.requests import Requests
from otel_oom.otlp.spooled import LOGS, TRACES, SpoolCodec
from otel_oom.otlp.transport import ExportResult
from otel_oom.schema.records import OomEpisode, record_from_json

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "otlp"
META = json.loads((FIXTURES / "golden.json").read_text())
OBSERVED = META["observed_ns"]
REQUEST = {LOGS: ExportLogsServiceRequest, TRACES: ExportTraceServiceRequest}


def records() -> list:
    return [record_from_json(line) for line in (FIXTURES / "records.jsonl").read_text().splitlines()]


def golden(name: str, signal: str):
    request = REQUEST[signal].FromString((FIXTURES / name).read_bytes())
    for rs in (request.resource_logs if signal == LOGS else request.resource_spans):
        for ss in (rs.scope_logs if signal == LOGS else rs.scope_spans):
            assert ss.scope.version == META["version"]
            ss.scope.version = __version__  # the scope carries the agent's version, whatever it is now
    return request


def requests() -> Requests:
    return Requests(Resource(META["resource"]))


def assert_same(built: bytes, expected, signal: str) -> None:
    got = REQUEST[signal].FromString(built)
    assert got == expected
    assert got.SerializeToString() == expected.SerializeToString()


def encoded(codec: SpoolCodec, recs: list, signal: str) -> list[bytes]:
    items = [codec.decode(codec.encode(r)) for r in recs]
    assert {i.signal for i in items} <= {signal}
    return [i.message for i in items]


def test_every_log_record_encodes_as_the_sdk_encoded_it():
    logs = [r for r in records() if not isinstance(r, OomEpisode)]
    assert len(logs) == 9
    built = requests().build(LOGS, encoded(SpoolCodec(), logs, LOGS), observed_ns=OBSERVED)
    expected = golden("golden-logs.bin", LOGS)
    assert_same(built, expected, LOGS)
    recs = expected.resource_logs[0].scope_logs[0].log_records
    # what the comparison covers, read back: a raw kernel byte as bytes_value, a value past int64 left out
    hostile = {kv.key: kv.value for kv in recs[2].attributes}
    assert hostile["process.executable.name"].bytes_value == b"\x1b]0;x\x07\n\xff"
    assert hostile["container.name"].string_value == "caf\u00e9\u202e-\U0001f600"
    assert "oom.domain.size" not in hostile and hostile["oom.badness"].int_value == -(1 << 63)
    assert recs[0].trace_id.hex() == "5b8efff798038103d269b633813fc60c" and recs[0].flags == 1
    assert recs[2].trace_id == b"" and recs[1].time_unix_nano == 0  # a trace id alone is no trace


def test_the_wire_bytes_differ_only_in_where_the_observed_time_is():
    logs = [r for r in records() if not isinstance(r, OomEpisode)]
    built = requests().build(LOGS, encoded(SpoolCodec(), logs[:1], LOGS), observed_ns=OBSERVED)
    expected = golden("golden-logs.bin", LOGS)
    del expected.resource_logs[0].scope_logs[0].log_records[1:]
    canonical = expected.SerializeToString()
    observed = b"\x59" + OBSERVED.to_bytes(8, "little")
    assert built != canonical and len(built) == len(canonical)
    assert built.replace(observed, b"") == canonical.replace(observed, b"")


def test_attribute_limits_apply_as_the_sdk_applied_them():
    logs = [r for r in records() if not isinstance(r, OomEpisode)]
    codec = SpoolCodec(resolve_otlp(META["limits_env"]).log_limits)
    assert (codec.limits.count, codec.limits.length) == (12, 6)
    built = requests().build(LOGS, encoded(codec, logs, LOGS), observed_ns=OBSERVED)
    expected = golden("golden-logs-limits.bin", LOGS)
    assert_same(built, expected, LOGS)
    assert expected.resource_logs[0].scope_logs[0].log_records[0].dropped_attributes_count > 0


def test_every_episode_span_encodes_as_the_sdk_encoded_it():
    spans = [r for r in records() if isinstance(r, OomEpisode)]
    assert len(spans) == 2
    built = requests().build(TRACES, encoded(SpoolCodec(), spans, TRACES))
    expected = golden("golden-traces.bin", TRACES)
    assert_same(built, expected, TRACES)
    first, second = expected.resource_spans[0].scope_spans[0].spans
    assert (first.status.code, first.status.message, len(first.events)) == (2, "kill", 3)
    assert second.status.code == 1 and second.end_time_unix_nano == second.start_time_unix_nano


class Capture:
    """An exporter double that builds each request exactly as OtlpExport does and accepts it."""

    def __init__(self) -> None:
        self.requests = Requests(Resource(META["resource"]))
        self.sent: list[tuple[str, bytes]] = []

    def carries(self, signal: str) -> bool:
        return True

    def send(self, signal, messages, timeout_s=None):
        self.sent.append((signal, self.requests.build(signal, messages, observed_ns=OBSERVED)))
        return ExportResult("accepted")

    def readable(self, signal, message):
        return {}

    def shutdown(self) -> None:
        pass


def test_a_spool_left_by_the_agent_before_is_delivered_as_it_would_have_sent_it(tmp_path):
    shutil.copytree(FIXTURES / "main-spool", tmp_path / "spool")
    os.chmod(tmp_path / "spool", 0o700)
    spool = Spool(tmp_path / "spool", fsync=False)
    try:
        waiting = spool.pending(100)
        assert len(waiting) == META["spool_waiting"]
        assert all(p.startswith(b"{") for _, p in waiting)  # JSON, kills without "type"
        assert sum(b'"type"' not in p for _, p in waiting) == 1
        exporter, stopping, drops = Capture(), threading.Event(), Counter()
        sender = SpoolSender(spool, exporter, drops, stopping)
        stopping.set()
        sender.run()  # delivers what is pending, then returns (stopping)
        assert spool.pending(100) == [] and drops == Counter()
    finally:
        spool.close()
    (traces, span_request), (logs, log_request) = exporter.sent
    assert (traces, logs) == (TRACES, LOGS)
    assert_same(span_request, golden("golden-spool-traces.bin", TRACES), TRACES)
    assert_same(log_request, golden("golden-spool-logs.bin", LOGS), LOGS)


@pytest.mark.parametrize("payload", [b"", b"\x01", b"\x02\x01\x00\x00", b"\x01\x07\x00\x00x", b"\x02\x01ab",
                                     b'{"type":"oom.future"}', b"{not json", b"[1]"])
def test_a_payload_this_agent_cannot_read_is_refused_not_misread(payload):
    with pytest.raises((ValueError, TypeError)):
        SpoolCodec().decode(payload)
