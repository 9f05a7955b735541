"""What the agent makes of a collector's answers it cannot trust (issue 21), with the real export
(`OtlpExport`, gRPC and HTTP transports) and the real sender against real local receivers
(testing/otlp_receiver.py): partial successes with negative or absurd counts, answers larger than
the receive limit, and TLS failures, whose log line must give the reason, not only "SSLError"."""
from __future__ import annotations

import logging
import shutil
import threading
from collections import Counter

import pytest
from conftest import require
from opentelemetry.sdk.resources import Resource

from otel_oom.delivery.parked import ParkedEvents
from otel_oom.delivery.sender import SpoolSender
from otel_oom.delivery.store import MemoryStore
from otel_oom.otlp.env import resolve_otlp
from otel_oom.otlp.export import OtlpExport
from otel_oom.otlp.spooled import SpoolCodec
from otel_oom.otlp.transport import MAX_ANSWER_BYTES
from otel_oom.schema.records import OomKill
from testing.otlp_receiver import OtlpGrpcReceiver, OtlpHttpReceiver, free_port, make_test_pki

CODEC = SpoolCodec()
RECEIVERS = {"grpc": OtlpGrpcReceiver, "http/protobuf": OtlpHttpReceiver}


def kills(n: int) -> MemoryStore:
    store = MemoryStore()
    for pid in range(1, n + 1):
        store.append(CODEC.encode(OomKill(f"b:{pid}:{pid}", 1000 + pid, pid, "tp_btf", "none", False, pid, pid, "leaky")))
    return store


def deliver(endpoint: str, protocol: str, store: MemoryStore, tmp_path, **env: str) -> tuple[Counter, OtlpExport]:
    settings = resolve_otlp({"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
                             "OTEL_EXPORTER_OTLP_TIMEOUT": "10", **env})
    export = OtlpExport(Resource.create({"service.name": "otel-oom"}), settings)
    drops: Counter[str] = Counter()
    sender = SpoolSender(store, export, drops, threading.Event(), parked=ParkedEvents(str(tmp_path), 1 << 20))
    try:
        assert sender._deliver(store.pending()) is None
    finally:
        export.shutdown()
    return drops, export


@pytest.mark.parametrize("protocol", sorted(RECEIVERS))
@pytest.mark.parametrize("rejected, counted", [(-5, 0), (-(1 << 63), 0), (4, 4), (5, 4), ((1 << 63) - 1, 4)])
def test_partial_success_counts_are_bounded_by_the_request(protocol, rejected, counted, tmp_path, caplog):
    with RECEIVERS[protocol]() as rx:
        rx.partial_success(rejected, "collector says")
        store = kills(4)
        drops, _ = deliver(rx.endpoint, protocol, store, tmp_path)
        assert rx.log_count() == 4 and store.pending() == []
    assert drops == (Counter(collector_partial=counted) if counted else Counter())
    if not 0 <= rejected <= 4:
        assert f"the collector said {rejected} of 4 rejected, taken as {counted}" in caplog.text


@pytest.mark.parametrize("protocol", sorted(RECEIVERS))
def test_an_answer_over_the_receive_limit_is_no_request_too_large(protocol, tmp_path, caplog):
    """Before, gRPC's own RESOURCE_EXHAUSTED on the answer read as the server's "request too large":
    the batch was split down to single kills, each "too large" again, parked and counted as rejected
    although the collector had every one of them."""
    with RECEIVERS[protocol]() as rx:
        rx.partial_success(0, "x" * (MAX_ANSWER_BYTES + 1000))
        store = kills(3)
        with caplog.at_level(logging.WARNING, logger="otel_oom.otlp"):
            drops, export = deliver(rx.endpoint, protocol, store, tmp_path)
        assert rx.log_count() == 3 and len(rx.requests) == 1   # one request, not split
    assert drops == Counter() and store.pending() == [] and not (tmp_path / "parked.jsonl").exists()
    assert "answer exceeded" in caplog.text and export.export_failures == Counter()


def test_a_request_over_the_collectors_limit_is_still_too_large(tmp_path):
    """The other side of the same error text: the server's limit on our request still splits."""
    import grpc

    with OtlpGrpcReceiver() as rx:
        rx.max_records(1, grpc.StatusCode.RESOURCE_EXHAUSTED)
        store = kills(2)
        drops, _ = deliver(rx.endpoint, "grpc", store, tmp_path)
        assert rx.log_count() == 2
    assert drops == Counter()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    require(shutil.which("openssl") is not None, "needs `openssl` on PATH for the TLS tests")
    return make_test_pki(tmp_path_factory.mktemp("hardening-tls"))


def _first_failure(endpoint: str, **env: str) -> str:
    settings = resolve_otlp({"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                             "OTEL_EXPORTER_OTLP_TIMEOUT": "10", **env})
    export = OtlpExport(Resource.create({}), settings)
    try:
        result = export.send("logs", [CODEC.decode(kills(1).pending()[0][1]).message])
    finally:
        export.shutdown()
    assert result.outcome == "retry"
    return result.message


def test_http_tls_failures_say_why(pki):
    with OtlpHttpReceiver(tls=pki.server_tls()) as rx:
        assert _first_failure(rx.endpoint) == "SSLError: certificate verify failed: unable to get local issuer certificate"
        plain = _first_failure(rx.endpoint.replace("https://", "http://"))
        assert plain.startswith("ConnectionError: the collector closed the connection"), plain
    with OtlpHttpReceiver(tls=pki.server_tls(mutual=True)) as rx:
        no_cert = _first_failure(rx.endpoint, OTEL_EXPORTER_OTLP_CERTIFICATE=pki.ca_cert)
        # the server's alert, or its close when the alert loses the race: a reason either way
        assert no_cert.startswith("SSLError: TLS ") and ("CERTIFICATE_REQUIRED" in no_cert or "EOF" in no_cert), no_cert
    assert _first_failure(f"http://127.0.0.1:{free_port()}") == "ConnectionError: Connection refused"
