"""The test OTLP receivers themselves, fed by the real OpenTelemetry SDK exporters (not by otel_oom).

Each test configures the SDK through constructor arguments only, so it says nothing about how
otel_oom reads the environment; it pins what the receivers record, their fault injection,
their restart on the same port, and TLS / mutual TLS with certificates made by openssl.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import grpc
import pytest
from conftest import require
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from opentelemetry.metrics import Observation
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import LogRecordExportResult, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from testing.otlp_receiver import OtlpGrpcReceiver, OtlpHttpReceiver, free_port, make_test_pki

RESOURCE = Resource({"service.name": "receiver-test", "host.name": "h1"})


def emit_one(exporter, **attrs) -> None:
    """One record through a real LoggerProvider + SimpleLogRecordProcessor (synchronous)."""
    provider = LoggerProvider(resource=RESOURCE, shutdown_on_exit=False)
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    logger = provider.get_logger("receiver.test", "9.9")
    _exporters.append(exporter)
    logger.emit(timestamp=1_700_000_000_123_456_789, severity_number=SeverityNumber.WARN, severity_text="WARN",
                body="hello", attributes=attrs, event_name="test.event")


_exporters = []


@pytest.fixture(autouse=True)
def _shutdown_exporters():
    yield
    while _exporters:
        _exporters.pop().shutdown()


def export_batch(exporter):
    """Export one record directly (the result is what the exporter saw)."""
    if exporter not in _exporters:
        _exporters.append(exporter)
    captured = []

    class Capture(SimpleLogRecordProcessor):
        def on_emit(self, log_record):
            from opentelemetry.sdk._logs import ReadableLogRecord

            captured.append(ReadableLogRecord(log_record=log_record.log_record, resource=log_record.resource,
                                              instrumentation_scope=log_record.instrumentation_scope))

    provider = LoggerProvider(resource=RESOURCE, shutdown_on_exit=False)
    provider.add_log_record_processor(Capture(exporter))
    provider.get_logger("receiver.test").emit(body="x", event_name="test.event")
    return exporter.export(captured)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    require(shutil.which("openssl") is not None, "needs `openssl` on PATH for the TLS tests")
    return make_test_pki(tmp_path_factory.mktemp("pki"))


# ---- gRPC ----------------------------------------------------------------------------------------

def test_grpc_records_are_flattened_with_types_resource_scope_and_metadata():
    with OtlpGrpcReceiver() as r:
        assert r.endpoint == f"http://127.0.0.1:{r.port}" and r.port > 0
        exporter = GrpcLogExporter(endpoint=r.endpoint, insecure=True, headers={"x-api-key": "s3cret"})
        emit_one(exporter, s="v", i=7, f=1.5, b=True, arr=[1, 2], bs=b"\x00\xff")
        recs = r.wait_for_logs(1, timeout=5)
    rec = recs[0]
    assert rec["event_name"] == "test.event"
    assert rec["body"] == "hello"
    assert rec["severity_number"] == SeverityNumber.WARN.value and rec["severity_text"] == "WARN"
    assert rec["time_unix_nano"] == 1_700_000_000_123_456_789
    assert abs(rec["observed_time_unix_nano"] - time.time_ns()) < 30 * 10**9
    assert rec["attributes"] == {"s": "v", "i": 7, "f": 1.5, "b": True, "arr": [1, 2], "bs": b"\x00\xff"}
    assert rec["resource"] == {"service.name": "receiver-test", "host.name": "h1"}
    assert rec["scope"] == {"name": "receiver.test", "version": "9.9", "attributes": {}}
    assert rec["received_ns"] >= rec["observed_time_unix_nano"]
    md = r.metadata("logs")
    assert len(md) == 1 and md[0]["x-api-key"] == "s3cret"
    assert r.log_count() == 1


def test_grpc_metric_points_sum_histogram_gauge_and_latest():
    with OtlpGrpcReceiver() as r:
        reader = PeriodicExportingMetricReader(GrpcMetricExporter(endpoint=r.endpoint, insecure=True),
                                               export_interval_millis=3_600_000)
        provider = MeterProvider(metric_readers=[reader], resource=RESOURCE, shutdown_on_exit=False)
        meter = provider.get_meter("m")
        c = meter.create_counter("c", unit="{x}")
        h = meter.create_histogram("h", unit="By", explicit_bucket_boundaries_advisory=[10.0, 100.0])
        meter.create_observable_gauge("g", callbacks=[lambda _o: [Observation(3, {"k": "v"})]])
        c.add(2, {"a": "1"})
        h.record(50, {"a": "1"})
        provider.force_flush()
        c.add(3, {"a": "1"})
        provider.force_flush()
        provider.shutdown()
        sums = r.wait_for_metric("c", lambda pts: len(pts) >= 2, timeout=5)
        assert [p["value"] for p in sums][:2] == [2, 5]  # cumulative
        assert sums[0]["kind"] == "sum" and sums[0]["is_monotonic"] and sums[0]["unit"] == "{x}"
        assert [p["value"] for p in r.metric_points("c", latest=True)] == [5]
        hist = r.metric_points("h")[0]
        assert hist["count"] == 1 and hist["sum"] == 50 and hist["explicit_bounds"] == [10.0, 100.0]
        assert hist["bucket_counts"] == [0, 1, 0] and hist["min"] == 50 and hist["max"] == 50
        gauge = r.metric_points("g")[0]
        assert gauge["kind"] == "gauge" and gauge["value"] == 3 and gauge["attributes"] == {"k": "v"}
        assert gauge["resource"]["service.name"] == "receiver-test"
        assert {"c", "h", "g"} <= r.metric_names()


def test_grpc_fail_with_count_then_accepts_and_records_attempts():
    with OtlpGrpcReceiver() as r:
        r.fail_with(grpc.StatusCode.UNAVAILABLE, count=1)
        exporter = GrpcLogExporter(endpoint=r.endpoint, insecure=True, timeout=10)
        assert export_batch(exporter) is LogRecordExportResult.SUCCESS
        assert [q["fault"] for q in r.requests] == [grpc.StatusCode.UNAVAILABLE, None]
        assert r.log_count() == 1  # the rejected attempt is not kept


def test_grpc_retry_after_is_sent_as_retry_info():
    with OtlpGrpcReceiver() as r:
        r.fail_with(grpc.StatusCode.RESOURCE_EXHAUSTED, count=1, retry_after=0.2)
        exporter = GrpcLogExporter(endpoint=r.endpoint, insecure=True, timeout=10)
        assert export_batch(exporter) is LogRecordExportResult.SUCCESS
        first, second = r.requests
        gap = (second["received_ns"] - first["received_ns"]) / 1e9
        # the SDK's own first backoff is 0.8-1.2 s; RetryInfo made it wait 0.2 s
        assert 0.15 < gap < 0.7, gap


def test_grpc_permanent_failure_and_delay_make_the_export_fail():
    with OtlpGrpcReceiver() as r:
        r.fail_with(grpc.StatusCode.UNAVAILABLE)
        exporter = GrpcLogExporter(endpoint=r.endpoint, insecure=True, timeout=1)
        assert export_batch(exporter) is LogRecordExportResult.FAILURE
        assert r.log_count() == 0 and all(q["fault"] for q in r.requests)
        r.fail_with(None)
        r.delay(1.5)
        assert export_batch(exporter) is LogRecordExportResult.FAILURE
        # like a real collector, a late answer still means the request was kept
        r.wait_for_logs(1, timeout=5)
        r.delay(0)
        assert export_batch(exporter) is LogRecordExportResult.SUCCESS


def test_grpc_stop_and_start_on_the_same_port():
    with OtlpGrpcReceiver() as r:
        endpoint = r.endpoint
        exporter = GrpcLogExporter(endpoint=endpoint, insecure=True, timeout=1)
        assert export_batch(exporter) is LogRecordExportResult.SUCCESS
        r.stop()
        assert export_batch(exporter) is LogRecordExportResult.FAILURE
        r.start()
        assert r.endpoint == endpoint
        exporter = GrpcLogExporter(endpoint=endpoint, insecure=True, timeout=5)
        assert export_batch(exporter) is LogRecordExportResult.SUCCESS
        assert r.log_count() == 2


def test_grpc_tls_and_mutual_tls(pki):
    ca = Path(pki.ca_cert).read_bytes()
    with OtlpGrpcReceiver(tls=pki.server_tls()) as r:
        assert r.endpoint.startswith("https://127.0.0.1:")
        creds = grpc.ssl_channel_credentials(root_certificates=ca)
        assert export_batch(GrpcLogExporter(endpoint=r.endpoint, credentials=creds, timeout=5)) \
            is LogRecordExportResult.SUCCESS
        plaintext = GrpcLogExporter(endpoint=r.endpoint.replace("https", "http"), insecure=True, timeout=1)
        assert export_batch(plaintext) is LogRecordExportResult.FAILURE
    with OtlpGrpcReceiver(tls=pki.server_tls(mutual=True)) as r:
        no_client_cert = GrpcLogExporter(endpoint=r.endpoint, credentials=grpc.ssl_channel_credentials(ca), timeout=1)
        assert export_batch(no_client_cert) is LogRecordExportResult.FAILURE
        creds = grpc.ssl_channel_credentials(ca, Path(pki.client_key).read_bytes(), Path(pki.client_cert).read_bytes())
        assert export_batch(GrpcLogExporter(endpoint=r.endpoint, credentials=creds, timeout=5)) \
            is LogRecordExportResult.SUCCESS
        assert r.requests[-1]["peer_cn"] == "otel-oom-client"
        assert r.log_count() == 1


def test_wait_for_logs_times_out_with_a_clear_message():
    with OtlpGrpcReceiver() as r:
        with pytest.raises(AssertionError, match="timed out after 0.2 s waiting for 3 log record"):
            r.wait_for_logs(3, timeout=0.2)
        with pytest.raises(AssertionError, match="metric 'nope'"):
            r.wait_for_metric("nope", timeout=0.2)


def test_a_port_nobody_listens_on_fails():
    exporter = GrpcLogExporter(endpoint=f"http://127.0.0.1:{free_port()}", insecure=True, timeout=1)
    assert export_batch(exporter) is LogRecordExportResult.FAILURE


# ---- HTTP/protobuf -------------------------------------------------------------------------------

def test_http_gzip_bodies_are_decoded_and_headers_recorded():
    with OtlpHttpReceiver() as r:
        exporter = HttpLogExporter(endpoint=r.endpoint + "/v1/logs", compression=HttpCompression.Gzip,
                                   headers={"Authorization": "Bearer t0ken"})
        emit_one(exporter, k="v")
        rec = r.wait_for_logs(1, timeout=5)[0]
        assert rec["body"] == "hello" and rec["attributes"] == {"k": "v"} and rec["event_name"] == "test.event"
        md = r.metadata("logs")[0]
        assert md["content-encoding"] == "gzip" and md["authorization"] == "Bearer t0ken"
        assert md["content-type"] == "application/x-protobuf"


def test_http_429_with_retry_after_then_accept_and_503_forever():
    with OtlpHttpReceiver() as r:
        r.fail_with(429, count=1, retry_after=0)
        exporter = HttpLogExporter(endpoint=r.endpoint + "/v1/logs", timeout=10)
        assert export_batch(exporter) is LogRecordExportResult.SUCCESS
        assert [q["fault"] for q in r.requests] == [429, None]
        r.fail_with(503)
        exporter = HttpLogExporter(endpoint=r.endpoint + "/v1/logs", timeout=1)
        assert export_batch(exporter) is LogRecordExportResult.FAILURE
        assert r.log_count() == 1


def test_http_stop_closes_kept_alive_connections_and_start_comes_back():
    with OtlpHttpReceiver() as r:
        exporter = HttpLogExporter(endpoint=r.endpoint + "/v1/logs", timeout=1)
        assert export_batch(exporter) is LogRecordExportResult.SUCCESS
        r.stop()
        assert export_batch(exporter) is LogRecordExportResult.FAILURE
        r.start()
        assert export_batch(exporter) is LogRecordExportResult.SUCCESS
        assert r.log_count() == 2


def test_http_unknown_path_and_json_are_refused():
    import urllib.error
    import urllib.request

    with OtlpHttpReceiver() as r:
        for path, ctype, status in (("/v1/profiles", "application/x-protobuf", 404),
                                    ("/v1/logs", "application/json", 415)):
            req = urllib.request.Request(r.endpoint + path, data=b"{}", headers={"Content-Type": ctype})
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(req, timeout=5)
            e.value.close()
            assert e.value.code == status
        assert r.log_count() == 0


def test_http_tls_and_mutual_tls(pki, monkeypatch):
    # requests lets these replace the CA file given to the exporter (otel_oom.telemetry guards against it)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    with OtlpHttpReceiver(tls=pki.server_tls()) as r:
        assert r.endpoint.startswith("https://")
        exporter = HttpLogExporter(endpoint=r.endpoint + "/v1/logs", certificate_file=pki.ca_cert, timeout=5)
        assert export_batch(exporter) is LogRecordExportResult.SUCCESS
    with OtlpHttpReceiver(tls=pki.server_tls(mutual=True)) as r:
        without = HttpLogExporter(endpoint=r.endpoint + "/v1/logs", certificate_file=pki.ca_cert, timeout=1)
        assert export_batch(without) is LogRecordExportResult.FAILURE
        with_cert = HttpLogExporter(endpoint=r.endpoint + "/v1/logs", certificate_file=pki.ca_cert,
                                    client_certificate_file=pki.client_cert, client_key_file=pki.client_key,
                                    timeout=5)
        assert export_batch(with_cert) is LogRecordExportResult.SUCCESS
        assert r.requests[-1]["peer_cn"] == "otel-oom-client"
        assert r.log_count() == 1
