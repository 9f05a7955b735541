"""Both transports, both signals, against collectors that give canned answers: a gRPC server (a test
double: raw bytes in and out, so it can also answer garbage) and an HTTP server, both in-process.
Each answer must become the outcome the sender acts on: accepted (with the partial success's
rejected count), rejected, too large, or retry (with the collector's Retry-After / RetryInfo)."""
from __future__ import annotations

import http.server
import threading
from concurrent import futures
from typing import Callable, Optional

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.rpc.error_details_pb2 import RetryInfo
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsPartialSuccess,
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource

from otel_oom.otlp.env import resolve_otlp
from otel_oom.otlp.export import OtlpExport
from otel_oom.otlp.spooled import LOGS, TRACES, SpoolCodec
from otel_oom.otlp.transport import transport
from otel_oom.schema.records import OomEpisode, OomKill
from testing.otlp_receiver import free_port

SERVICES = {LOGS: "opentelemetry.proto.collector.logs.v1.LogsService",
            TRACES: "opentelemetry.proto.collector.trace.v1.TraceService"}
GARBAGE = b"\xff\xfe not protobuf \x07"


def partial(signal: str, rejected: int, message: str) -> bytes:
    if signal == LOGS:
        return ExportLogsServiceResponse(partial_success=ExportLogsPartialSuccess(
            rejected_log_records=rejected, error_message=message)).SerializeToString()
    return ExportTraceServiceResponse(partial_success=ExportTracePartialSuccess(
        rejected_spans=rejected, error_message=message)).SerializeToString()


class FakeGrpcCollector:
    """A test double of a collector's gRPC services: `answer(context)` returns the raw response bytes
    (or aborts the call); every request's path, raw bytes and metadata are kept."""

    def __init__(self) -> None:
        self.answer: Callable[[grpc.ServicerContext], bytes] = lambda context: b""
        self.calls: list[tuple[str, bytes, dict]] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(2))
        for service in SERVICES.values():
            handler = grpc.unary_unary_rpc_method_handler(self._handle(service))  # no (de)serializers: bytes
            self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {"Export": handler}),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _handle(self, service: str):
        def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
            self.calls.append((service, request, dict(context.invocation_metadata())))
            return self.answer(context)
        return handle

    def close(self) -> None:
        self.server.stop(None)


class FakeHttpCollector:
    """A test double of a collector's HTTP endpoints: answers (status, headers, body) to every POST."""

    def __init__(self) -> None:
        self.answer: tuple[int, dict, bytes] = (200, {}, b"")
        self.calls: list[tuple[str, bytes, dict]] = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                fake.calls.append((self.path, body, dict(self.headers)))
                status, headers, content = fake.answer
                self.send_response(status)
                for k, v in {**headers, "Content-Length": str(len(content))}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def grpc_collector():
    c = FakeGrpcCollector()
    yield c
    c.close()


@pytest.fixture
def http_collector():
    c = FakeHttpCollector()
    yield c
    c.close()


def settings(port: int, protocol: str = "grpc"):
    return resolve_otlp({"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
                         "OTEL_EXPORTER_OTLP_PROTOCOL": protocol, "OTEL_EXPORTER_OTLP_TIMEOUT": "5",
                         "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=t1"})


def aborts(code: grpc.StatusCode, details: str, retry_s: Optional[float] = None):
    def answer(context: grpc.ServicerContext) -> bytes:
        if retry_s is not None:
            d = Duration(seconds=int(retry_s), nanos=int(retry_s % 1 * 1e9))
            context.set_trailing_metadata((("google.rpc.retryinfo-bin", RetryInfo(retry_delay=d).SerializeToString()),))
        context.abort(code, details)
        raise AssertionError("abort returns no answer")
    return answer


@pytest.mark.parametrize("signal", [LOGS, TRACES])
def test_grpc_answers(grpc_collector, signal):
    s = getattr(settings(grpc_collector.port), signal)
    t = transport(s, signal)
    try:
        request = b"\x0a\x00"  # one empty ResourceLogs / ResourceSpans
        r = t.export(request, 5)
        assert (r.outcome, r.rejected, r.ok) == ("accepted", 0, True)
        service, got, metadata = grpc_collector.calls[-1]
        assert (service, got, metadata["x-tenant"]) == (SERVICES[signal], request, "t1")
        assert metadata["user-agent"].startswith("otel-oom/")

        grpc_collector.answer = lambda context: partial(signal, 3, "3 too old")
        r = t.export(request, 5)
        assert (r.outcome, r.rejected, r.message) == ("accepted", 3, "3 too old")

        grpc_collector.answer = aborts(grpc.StatusCode.INVALID_ARGUMENT, "bad attribute")
        r = t.export(request, 5)
        assert (r.outcome, r.message) == ("rejected", "INVALID_ARGUMENT: bad attribute")

        grpc_collector.answer = aborts(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                       "grpc: received message larger than max (5000 vs. 4194304)")
        assert t.export(request, 5).outcome == "too_large"
        grpc_collector.answer = aborts(grpc.StatusCode.RESOURCE_EXHAUSTED, "memory limiter: data refused")
        assert t.export(request, 5).outcome == "retry"  # a full collector, not a message too large

        grpc_collector.answer = aborts(grpc.StatusCode.UNAVAILABLE, "overloaded", retry_s=2.5)
        r = t.export(request, 5)
        assert (r.outcome, r.retry_after, r.message) == ("retry", 2.5, "UNAVAILABLE: overloaded")
        grpc_collector.answer = aborts(grpc.StatusCode.UNAUTHENTICATED, "no token", retry_s=9)
        r = t.export(request, 5)
        assert (r.outcome, r.retry_after) == ("retry", None)  # kept, but not a retryable code: own backoff

        grpc_collector.answer = lambda context: GARBAGE  # a success answer the client cannot parse
        r = t.export(request, 5)
        assert r.outcome == "retry" and r.message.startswith("INTERNAL")
    finally:
        t.close()


def test_grpc_without_a_collector_is_retry(grpc_collector):
    t = transport(settings(free_port()).logs, LOGS)
    try:
        r = t.export(b"", 1)
        assert r.outcome == "retry" and r.message.startswith(("UNAVAILABLE", "DEADLINE_EXCEEDED"))
    finally:
        t.close()


@pytest.mark.parametrize("signal", [LOGS, TRACES])
def test_http_answers(http_collector, signal):
    s = getattr(settings(http_collector.port, "http/protobuf"), signal)
    t = transport(s, signal)
    try:
        request = b"\x0a\x00"
        r = t.export(request, 5)
        assert (r.outcome, r.rejected) == ("accepted", 0)
        path, got, headers = http_collector.calls[-1]
        assert (path, got) == (f"/v1/{signal}", request)
        assert headers["Content-Type"] == "application/x-protobuf" and headers["x-tenant"] == "t1"

        http_collector.answer = (200, {"Content-Type": "application/x-protobuf"}, partial(signal, 2, "2 dropped"))
        r = t.export(request, 5)
        assert (r.outcome, r.rejected, r.message) == ("accepted", 2, "2 dropped")

        http_collector.answer = (200, {}, GARBAGE)  # a proxy's answer: the batch was still accepted
        assert t.export(request, 5).outcome == "accepted"

        http_collector.answer = (400, {}, Status(code=3, message="bad attribute").SerializeToString())
        r = t.export(request, 5)
        assert (r.outcome, r.message) == ("rejected", "HTTP 400 Bad Request: bad attribute")
        http_collector.answer = (400, {}, GARBAGE)
        assert (t.export(request, 5).outcome, t.export(request, 5).message) == ("rejected", "HTTP 400 Bad Request")

        http_collector.answer = (413, {}, b"")
        assert t.export(request, 5).outcome == "too_large"

        http_collector.answer = (503, {"Retry-After": "7"}, GARBAGE)
        r = t.export(request, 5)
        assert (r.outcome, r.retry_after, r.message) == ("retry", 7.0, "HTTP 503 Service Unavailable")
        http_collector.answer = (429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, b"")
        assert (t.export(request, 5).outcome, t.export(request, 5).retry_after) == ("retry", None)
        http_collector.answer = (500, {"Retry-After": "3"}, b"")
        assert (t.export(request, 5).outcome, t.export(request, 5).retry_after) == ("retry", None)
    finally:
        t.close()


def test_http_without_a_collector_is_retry():
    t = transport(settings(free_port(), "http/protobuf").logs, LOGS)
    try:
        r = t.export(b"", 1)
        assert r.outcome == "retry" and r.message == "ConnectionError: Connection refused"  # the reason, no URL
    finally:
        t.close()


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_the_export_sends_each_signal_to_its_service_and_counts_failures(grpc_collector, http_collector, protocol):
    port = grpc_collector.port if protocol == "grpc" else http_collector.port
    failures: list[str] = []
    export = OtlpExport(Resource({"service.name": "t"}), settings(port, protocol), traces=True,
                        on_failure=failures.append)
    codec = SpoolCodec()
    kill = OomKill("b:1:7", 5, 1, "tp_btf", "none", False, 7, 7, "x")
    span = OomEpisode("a" * 32, "b" * 16, 1, 2, "host", "pressure", "cleared")
    try:
        assert export.carries(TRACES) and export.describe().startswith(f"logs {protocol} to ")
        assert export.send(LOGS, [codec.decode(codec.encode(kill)).message]).ok
        assert export.send(TRACES, [codec.decode(codec.encode(span)).message]).ok
        assert export.send(LOGS, []).ok  # nothing to send is no attempt
        calls = grpc_collector.calls if protocol == "grpc" else http_collector.calls
        (logs_to, logs_req, _), (traces_to, traces_req, _) = calls
        assert logs_to in (SERVICES[LOGS], "/v1/logs") and traces_to in (SERVICES[TRACES], "/v1/traces")
        (lr,) = ExportLogsServiceRequest.FromString(logs_req).resource_logs[0].scope_logs[0].log_records
        assert lr.attributes[0].value.int_value == 7 and lr.observed_time_unix_nano > 0
        (sp,) = ExportTraceServiceRequest.FromString(traces_req).resource_spans[0].scope_spans[0].spans
        assert sp.name == "oom.episode"
        if protocol == "grpc":
            grpc_collector.answer = aborts(grpc.StatusCode.UNAVAILABLE, "down")
        else:
            http_collector.answer = (503, {}, b"")
        assert export.send(TRACES, [b""]).outcome == "retry"
        assert failures == [TRACES] and export.export_failures == {TRACES: 1}
    finally:
        export.shutdown()
    assert export.send(LOGS, [b""]).outcome == "retry"  # after shutdown nothing goes out


def test_without_traces_the_export_carries_logs_only():
    export = OtlpExport(Resource({}), settings(free_port()))
    try:
        assert export.carries(LOGS) and not export.carries(TRACES)
    finally:
        export.shutdown()


def test_http_framing_headers_from_the_configuration_are_left_out(http_collector):
    s = resolve_otlp({"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{http_collector.port}",
                      "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                      "OTEL_EXPORTER_OTLP_HEADERS": "content-length=1,transfer-encoding=chunked,x-tenant=t1"})
    t = transport(s.logs, LOGS)
    try:
        request = b"\x0a\x00" * 8
        assert t.export(request, 5).outcome == "accepted"
        path, got, headers = http_collector.calls[-1]
        assert got == request and headers["Content-Length"] == str(len(request)) and headers["x-tenant"] == "t1"
        assert "transfer-encoding" not in {k.lower() for k in headers}
    finally:
        t.close()
