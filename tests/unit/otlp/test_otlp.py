"""otel_oom.otlp for real: the resource and its precedence rules, the OomKill -> record
mapping, the log export (`OtlpExport`) into real OTLP receivers (gRPC, HTTP/protobuf, TLS, mutual
TLS, failures, outage and comeback), Metrics into a receiver and a Prometheus registry, and the
one-line validation of the OTEL_* environment."""
from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from pathlib import Path

import grpc
import pytest
from conftest import require
from prometheus_client import generate_latest

from otel_oom import __version__
from otel_oom.errors import UsageError
from otel_oom.otlp.env import ConfigError, resolve_otlp
from otel_oom.otlp.export import OtlpExport
from otel_oom.otlp.metrics import Metrics
from otel_oom.otlp.requests import Requests
from otel_oom.otlp.resource import SERVICE_INSTANCE_NAMESPACE, build_resource
from otel_oom.otlp.spooled import SpoolCodec
from otel_oom.schema.mapping import RSS_BUCKETS, log_attributes, log_body
from otel_oom.schema.records import OomKill
from testing.otlp_receiver import OtlpGrpcReceiver, OtlpHttpReceiver, free_port, make_test_pki

MiB = 1 << 20
MACHINE_ID = "0123456789abcdef0123456789abcdef"
POD = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
CID = "4f0c3b2a1e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b"
T = 1795602667_123456789
READABLE = __file__  # any readable file stands in for a key or certificate


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """The SDK exporters read os.environ: start every test from none of the OTEL_* settings."""
    for k in list(os.environ):
        if k.startswith(("OTEL_", "K8S_")):
            monkeypatch.delenv(k)
    yield monkeypatch


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    require(shutil.which("openssl") is not None, "needs `openssl` on PATH for the TLS tests")
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def machine(tmp_path):
    (tmp_path / "machine-id").write_text(MACHINE_ID + "\n")
    (tmp_path / "boot_id").write_text("8a1b2c3d-1111-2222-3333-444455556666\n")
    return tmp_path


def resource_for(machine, environ=None, **kw):
    return build_resource(environ or {}, machine_id_path=str(machine / "machine-id"), hostname="node-a",
                          boot_id_path=str(machine / "boot_id"), os_release="6.1.0-test", **kw)


def memcg_kill(**over) -> OomKill:
    base = dict(
        event_id="boot:1234567890:1234", time_unix_nano=T, boot_time_ns=1234567890, hook="tp_btf",
        context_hook="fentry", recovered=False, victim_pid=1234, victim_tid=1235, victim_comm="stress",
        victim_ppid=1000, victim_uid=1001, oom_score_adj=-100, total_vm_bytes=100 * MiB, anon_rss_bytes=30 * MiB,
        file_rss_bytes=1200 * 1024, shmem_rss_bytes=4096, pgtables_bytes=120 * 1024,
        cgroup_path=f"/kubepods/burstable/pod{POD}/{CID}", cgroup_line=f"0::/kubepods/burstable/pod{POD}/{CID}",
        container_runtime="containerd", container_id=CID, pod_uid=POD, pod_qos_class="burstable",
        trigger_pid=1234, trigger_tid=1236, trigger_comm="stress-worker",
        constraint="memcg", constraint_source="kernel", memcg_path=f"/kubepods/burstable/pod{POD}",
        memcg_limit_bytes=32 * MiB, memcg_usage_bytes=32 * MiB - 4096, memcg_source="kernel",
        domain_bytes=32 * MiB, badness_points=1950, gfp_mask=0xCC0, order=0, decision_id="boot:1234567890")
    base.update(over)
    return OomKill(**base)


def global_kill(**over) -> OomKill:
    base = dict(event_id="boot:99:4321", time_unix_nano=T + 1, boot_time_ns=99, hook="kmsg", context_hook="none",
                recovered=True, victim_pid=4321, victim_tid=4321, victim_comm="java", constraint="global")
    base.update(over)
    return OomKill(**base)


def messages(*kills: OomKill) -> list[bytes]:
    """The log records as the pipeline spools them and the sender reads them back."""
    codec = SpoolCodec()
    return [codec.decode(codec.encode(k)).message for k in kills]


class LogSender:
    """The log half of `OtlpExport`, called as these tests call it: records in, the collector's answer out."""

    def __init__(self, resource, settings, on_failure=None) -> None:
        from otel_oom.otlp.env import OtlpSettings

        self.export = OtlpExport(resource, OtlpSettings(logs=settings, metrics=settings, metric_export_interval_ms=1),
                                 on_failure=on_failure and (lambda signal: on_failure()))

    def describe(self) -> str:
        return self.export.describe()

    @property
    def export_failures(self) -> int:
        return self.export.export_failures["logs"]

    def send(self, kills):
        return self.export.send("logs", messages(*kills))

    def shutdown(self) -> None:
        self.export.shutdown()


FULL_ATTRIBUTES = {
    "process.pid": 1234, "process.parent_pid": 1000, "process.executable.name": "stress",
    "process.real_user.id": 1001, "process.linux.cgroup": f"0::/kubepods/burstable/pod{POD}/{CID}",
    "container.id": CID, "container.runtime.name": "containerd", "k8s.pod.uid": POD,
    "oom.victim.tid": 1235, "oom.victim.cgroup.path": f"/kubepods/burstable/pod{POD}/{CID}",
    "oom.victim.pod.qos_class": "burstable", "oom.victim.oom_score_adj": -100,
    "oom.victim.memory.total_vm": 100 * MiB, "oom.victim.memory.anon_rss": 30 * MiB,
    "oom.victim.memory.file_rss": 1200 * 1024, "oom.victim.memory.shmem_rss": 4096,
    "oom.victim.memory.rss": 30 * MiB + 1200 * 1024 + 4096, "oom.victim.memory.page_tables": 120 * 1024,
    "oom.trigger.pid": 1234, "oom.trigger.tid": 1236, "oom.trigger.executable.name": "stress-worker",
    "oom.constraint": "memcg", "oom.constraint.source": "kernel", "oom.memcg.path": f"/kubepods/burstable/pod{POD}",
    "oom.memcg.limit": 32 * MiB, "oom.memcg.usage": 32 * MiB - 4096, "oom.memcg.source": "kernel",
    "oom.domain.size": 32 * MiB, "oom.badness": 1950, "oom.gfp_mask": 0xCC0, "oom.order": 0,
    "oom.decision.id": "boot:1234567890", "oom.event.id": "boot:1234567890:1234", "oom.hook": "tp_btf",
    "oom.context_hook": "fentry", "oom.recovered": False, "oom.killer": "kernel",
}


# ---- resource ------------------------------------------------------------------------------------

def test_resource_detected_values(machine):
    attrs = dict(resource_for(machine).attributes)
    assert attrs == {
        "telemetry.sdk.language": "python", "telemetry.sdk.name": "opentelemetry",
        "telemetry.sdk.version": attrs["telemetry.sdk.version"],
        "service.name": "otel-oom", "service.version": __version__,
        "service.instance.id": str(uuid.uuid5(SERVICE_INSTANCE_NAMESPACE, MACHINE_ID)),
        "host.name": "node-a", "host.id": MACHINE_ID, "os.type": "linux", "os.version": "6.1.0-test",
    }
    assert uuid.UUID(attrs["service.instance.id"]).version == 5


def test_instance_id_is_stable_per_host_and_differs_between_hosts(machine, tmp_path_factory):
    other = tmp_path_factory.mktemp("other")
    (other / "machine-id").write_text("fedcba9876543210fedcba9876543210\n")
    (other / "boot_id").write_text("x\n")
    a1 = resource_for(machine).attributes["service.instance.id"]
    a2 = resource_for(machine).attributes["service.instance.id"]
    b = resource_for(other).attributes["service.instance.id"]
    assert a1 == a2 != b


@pytest.mark.parametrize("content", [None, "", "uninitialized\n"])
def test_without_a_machine_id_the_boot_id_identifies_the_instance(machine, content):
    if content is None:
        (machine / "machine-id").unlink()
    else:
        (machine / "machine-id").write_text(content)
    attrs = resource_for(machine).attributes
    assert "host.id" not in attrs
    assert attrs["service.instance.id"] == str(uuid.uuid5(SERVICE_INSTANCE_NAMESPACE,
                                                          "8a1b2c3d-1111-2222-3333-444455556666"))


def test_node_name_from_the_downward_api_is_the_host(machine):
    attrs = resource_for(machine, {"K8S_NODE_NAME": "worker-7"}).attributes
    assert attrs["host.name"] == "worker-7" and attrs["k8s.node.name"] == "worker-7"


def test_otel_resource_attributes_win_and_otel_service_name_wins_over_both(machine, caplog):
    env = {"K8S_NODE_NAME": "worker-7",
           "OTEL_RESOURCE_ATTRIBUTES": "host.name=override, service.name=from-attrs,"
                                       "deployment.environment.name=prod%20eu,sekrit-no-equals,k8s.cluster.name=c1"}
    with caplog.at_level(logging.WARNING, logger="otel_oom.otlp"):
        attrs = resource_for(machine, env).attributes
    assert attrs["host.name"] == "override"
    assert attrs["service.name"] == "from-attrs"
    assert attrs["deployment.environment.name"] == "prod eu"
    assert attrs["k8s.cluster.name"] == "c1" and attrs["k8s.node.name"] == "worker-7"
    assert "malformed OTEL_RESOURCE_ATTRIBUTES" in caplog.text and "sekrit" not in caplog.text
    env["OTEL_SERVICE_NAME"] = "my-oom-agent"
    assert resource_for(machine, env).attributes["service.name"] == "my-oom-agent"


def test_resource_on_this_host():
    attrs = build_resource({}).attributes
    assert attrs["os.version"] == os.uname().release
    machine_id = Path("/etc/machine-id").read_text().strip() if os.path.exists("/etc/machine-id") else ""
    if machine_id:
        assert attrs["host.id"] == machine_id
    assert attrs["service.instance.id"] == build_resource({}).attributes["service.instance.id"]


# ---- mapping ---------------------------------------------------------------------------------

def test_log_attributes_full():
    assert log_attributes(memcg_kill()) == FULL_ATTRIBUTES


def test_log_attributes_omit_what_is_unknown():
    assert log_attributes(global_kill()) == {
        "process.pid": 4321, "process.executable.name": "java", "oom.victim.tid": 4321,
        "oom.constraint": "global", "oom.constraint.source": "none", "oom.memcg.source": "none",
        "oom.event.id": "boot:99:4321", "oom.hook": "kmsg", "oom.context_hook": "none", "oom.recovered": True,
        "oom.killer": "kernel",
    }


def test_attribute_strings_are_valid_utf8_and_keep_control_characters():
    a = log_attributes(memcg_kill(victim_comm="\x1b[31mred\x07\nx\udcff", cgroup_path="/a\udce9b",
                                  trigger_comm="\ud800odd"))
    # not valid Unicode: sent as OTLP bytes_value, exactly the kernel's bytes (control characters kept)
    assert a["process.executable.name"] == b"\x1b[31mred\x07\nx\xff"
    assert a["oom.victim.cgroup.path"] == b"/a\xe9b"
    assert a["oom.trigger.executable.name"] == b"\\ud800odd"  # a surrogate no kernel byte made: visible
    assert a["process.pid"] == 1234
    for v in a.values():
        if isinstance(v, str):
            v.encode("utf-8")


def test_log_body_in_the_kernels_words():
    assert log_body(memcg_kill()) == (
        "Memory cgroup out of memory: Killed process 1234 (stress) total-vm:102400kB, anon-rss:30720kB, "
        "file-rss:1200kB, shmem-rss:4kB, UID:1001 pgtables:120kB oom_score_adj:-100")
    assert log_body(global_kill()) == "Out of memory: Killed process 4321 (java)"
    assert log_body(global_kill(anon_rss_bytes=2048, victim_uid=0)) == \
        "Out of memory: Killed process 4321 (java) anon-rss:2kB, UID:0"
    assert log_body(global_kill(constraint="cpuset")).startswith("Out of memory: ")


def test_log_body_escapes_names():
    body = log_body(memcg_kill(victim_comm="\x1b]0;x\x07\n\udcff"))
    assert "(\\x1b]0;x\\x07\\x0a\\xff)" in body
    assert "\x1b" not in body and "\n" not in body


# ---- the request: what goes on the wire -------------------------------------------------------

def test_one_request_holds_one_resource_one_scope_and_every_record(machine):
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    resource = resource_for(machine)
    req = ExportLogsServiceRequest.FromString(
        Requests(resource).build("logs", messages(memcg_kill(), global_kill()), observed_ns=T + 5))
    (rl,) = req.resource_logs
    assert {kv.key: kv.value.string_value for kv in rl.resource.attributes} == dict(resource.attributes)
    (sl,) = rl.scope_logs
    assert (sl.scope.name, sl.scope.version) == ("otel_oom", __version__) and len(sl.log_records) == 2
    lr = sl.log_records[0]
    assert lr.event_name == "oom.kill" and lr.severity_number == 17 and lr.severity_text == "ERROR"
    assert lr.time_unix_nano == T and lr.observed_time_unix_nano == T + 5
    assert lr.body.string_value == log_body(memcg_kill()) and len(lr.attributes) == len(FULL_ATTRIBUTES)
    assert lr.trace_id == b"" and lr.span_id == b"" and lr.flags == 0
    assert sl.log_records[1].observed_time_unix_nano == T + 5  # one observed time per request


# ---- the log export: for real ------------------------------------------------------------------------

def test_log_sender_grpc_delivers_complete_records(machine, clean_env):
    with OtlpGrpcReceiver() as rx:
        clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint)
        clean_env.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20s3cret-token,x-tenant=t1")
        resource = resource_for(machine, {"K8S_NODE_NAME": "worker-7"})
        sender = LogSender(resource, resolve_otlp(os.environ).logs)
        assert sender.describe() == f"logs grpc to {rx.endpoint}" and "s3cret" not in sender.describe()
        before = time.time_ns()
        assert sender.send([memcg_kill(), global_kill()]).ok is True
        sender.shutdown()
        recs = rx.log_records()
    assert len(recs) == 2
    rec = recs[0]
    assert rec["event_name"] == "oom.kill"
    assert rec["severity_number"] == 17 and rec["severity_text"] == "ERROR"
    assert rec["time_unix_nano"] == T
    assert before <= rec["observed_time_unix_nano"] <= time.time_ns()
    assert rec["body"] == log_body(memcg_kill())
    assert rec["attributes"] == FULL_ATTRIBUTES
    assert rec["resource"] == dict(resource.attributes)
    assert rec["resource"]["k8s.node.name"] == "worker-7"
    assert rec["scope"]["name"] == "otel_oom" and rec["scope"]["version"] == __version__
    assert recs[1]["attributes"]["oom.recovered"] is True and recs[1]["body"].startswith("Out of memory: ")
    md = rx.metadata("logs")[0]
    assert md["authorization"] == "Bearer s3cret-token" and md["x-tenant"] == "t1"
    assert sender.export_failures == 0


def test_log_sender_http_protobuf_with_gzip(machine, clean_env):
    with OtlpHttpReceiver() as rx:
        clean_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint)
        clean_env.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
        sender = LogSender(resource_for(machine), resolve_otlp(os.environ).logs)
        assert sender.describe() == f"logs http/protobuf to {rx.endpoint}/v1/logs"
        assert sender.send([memcg_kill()]).ok is True
        sender.shutdown()
        rec = rx.log_records()[0]
        assert rx.metadata("logs")[0]["content-encoding"] == "gzip"
    assert rec["event_name"] == "oom.kill" and rec["attributes"] == FULL_ATTRIBUTES and rec["time_unix_nano"] == T


def test_per_signal_protocol_and_endpoint_win(machine, clean_env):
    with OtlpGrpcReceiver() as grpc_rx, OtlpHttpReceiver() as http_rx:
        clean_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", grpc_rx.endpoint)
        clean_env.setenv("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "http/protobuf")
        clean_env.setenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", http_rx.endpoint + "/v1/logs")
        sender = LogSender(resource_for(machine), resolve_otlp(os.environ).logs)
        assert sender.send([memcg_kill()]).ok is True
        sender.shutdown()
        assert http_rx.log_count() == 1 and grpc_rx.log_count() == 0


def test_unavailable_collector_means_not_delivered_and_is_counted(machine, clean_env):
    failures = []
    with OtlpGrpcReceiver() as rx:
        clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint)
        clean_env.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
        sender = LogSender(resource_for(machine), resolve_otlp(os.environ).logs, on_failure=lambda: failures.append(1))
        rx.fail_with(grpc.StatusCode.UNAVAILABLE)
        assert sender.send([memcg_kill()]).ok is False
        assert len(rx.requests) == 1  # one attempt: the retrying is the send loop's, not the transport's
        assert sender.export_failures == 1 and failures == [1]
        rx.fail_with(grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert sender.send([memcg_kill()]).ok is False
        assert sender.export_failures == 2
        assert rx.log_count() == 0
        rx.fail_with(None)
        assert sender.send([memcg_kill()]).ok is True
        assert rx.log_count() == 1
        sender.shutdown()


def test_one_sender_survives_an_outage_and_the_comeback(machine, clean_env):
    with OtlpGrpcReceiver() as rx:
        clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint)
        clean_env.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
        sender = LogSender(resource_for(machine), resolve_otlp(os.environ).logs)
        assert sender.send([memcg_kill()]).ok is True
        rx.stop()
        assert sender.send([memcg_kill()]).ok is False
        rx.start()
        deadline = time.monotonic() + 15
        while not sender.send([global_kill()]).ok:  # gRPC reconnects with its own backoff
            assert time.monotonic() < deadline, "sender never reconnected"
        sender.shutdown()
        assert [r["attributes"]["process.pid"] for r in rx.log_records()] == [1234, 4321]


def test_no_collector_at_all_fails(machine, clean_env):
    clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    clean_env.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    sender = LogSender(resource_for(machine), resolve_otlp(os.environ).logs)
    assert sender.send([memcg_kill()]).ok is False
    assert sender.send([]).ok is True  # nothing to deliver is not a failure
    sender.shutdown()


def test_grpc_mutual_tls_from_the_standard_variables(machine, clean_env, pki):
    with OtlpGrpcReceiver(tls=pki.server_tls(mutual=True)) as rx:
        clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint)
        clean_env.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", pki.ca_cert)
        clean_env.setenv("OTEL_EXPORTER_OTLP_CLIENT_KEY", pki.client_key)
        clean_env.setenv("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", pki.client_cert)
        resolve_otlp(os.environ)
        sender = LogSender(resource_for(machine), resolve_otlp(os.environ).logs)
        assert sender.send([memcg_kill()]).ok is True
        sender.shutdown()
        assert rx.requests[-1]["peer_cn"] == "otel-oom-client" and rx.log_count() == 1


@pytest.mark.parametrize("signal", ["logs", "metrics"])
def test_http_tls_uses_the_otlp_certificate_even_with_requests_ca_bundle_set(machine, clean_env, pki,
                                                                             tmp_path_factory, signal):
    # an unrelated CA in REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE (many images set them) must not replace the
    # collector's CA, for the log records or the metrics
    other = make_test_pki(tmp_path_factory.mktemp("other-pki"))
    clean_env.setenv("REQUESTS_CA_BUNDLE", other.ca_cert)
    clean_env.setenv("CURL_CA_BUNDLE", other.ca_cert)
    with OtlpHttpReceiver(tls=pki.server_tls(mutual=True)) as rx:
        clean_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint)
        clean_env.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", pki.ca_cert)
        clean_env.setenv("OTEL_EXPORTER_OTLP_CLIENT_KEY", pki.client_key)
        clean_env.setenv("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", pki.client_cert)
        clean_env.setenv("OTEL_METRIC_EXPORT_INTERVAL", "3600000")
        if signal == "logs":
            sender = LogSender(resource_for(machine), resolve_otlp(os.environ).logs)
            assert sender.send([memcg_kill()]).ok is True
            sender.shutdown()
        else:
            m = Metrics(resource_for(machine), resolve_otlp(os.environ), **stats())
            m.record_kill(memcg_kill())
            assert m.force_flush()
            m.shutdown()
            assert sum(p["value"] for p in rx.metric_points("oom.kills", latest=True)) == 1
        assert rx.requests[-1]["peer_cn"] == "otel-oom-client"


# ---- Metrics --------------------------------------------------------------------------------------

def stats():
    return dict(drop_counts=lambda: {"ringbuf_full": 3, "queue_full": 0},
                hooks=lambda: [("tp_btf", "victim"), ("fentry", "context")],
                unobserved=lambda: 2)


def test_metrics_reach_the_collector(machine, clean_env):
    with OtlpGrpcReceiver() as rx:
        clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint)
        clean_env.setenv("OTEL_METRIC_EXPORT_INTERVAL", "3600000")
        resource = resource_for(machine)
        m = Metrics(resource, resolve_otlp(os.environ), **stats())
        m.record_kill(memcg_kill())
        m.record_kill(memcg_kill())
        m.record_kill(global_kill(anon_rss_bytes=3 * MiB, file_rss_bytes=0, shmem_rss_bytes=0))
        m.record_kill(global_kill())  # rss unknown: counted, not in the histogram
        assert m.force_flush()
        m.shutdown()

        kills = {tuple(sorted(p["attributes"].items())): p for p in rx.metric_points("oom.kills", latest=True)}
        assert {k: p["value"] for k, p in kills.items()} == {
            # bounded: never the container id or pod uid (a series per restart), counted per container
            # from the log records instead
            (("container.runtime.name", "containerd"), ("oom.constraint", "memcg"),
             ("oom.killer", "kernel"), ("oom.victim.pod.qos_class", "burstable")): 2,
            (("oom.constraint", "global"), ("oom.killer", "kernel")): 2,
        }
        p = next(iter(kills.values()))
        assert p["unit"] == "{kill}" and p["is_monotonic"] and p["resource"] == dict(resource.attributes)
        hist = {p["attributes"]["oom.constraint"]: p for p in rx.metric_points("oom.victim.rss", latest=True)}
        assert hist["memcg"]["count"] == 2 and hist["memcg"]["sum"] == 2 * memcg_kill().rss_bytes
        assert hist["global"]["count"] == 1 and hist["global"]["bucket_counts"][1] == 1  # (1 MiB, 4 MiB]
        assert hist["memcg"]["explicit_bounds"] == list(RSS_BUCKETS) and hist["memcg"]["unit"] == "By"
        assert RSS_BUCKETS[0] == MiB and RSS_BUCKETS[-1] == 64 << 30
        dropped = {p["attributes"]["reason"]: p["value"]
                   for p in rx.metric_points("otel_oom.events.dropped", latest=True)}
        assert dropped == {"ringbuf_full": 3, "queue_full": 0}
        hooks = sorted((p["attributes"]["oom.hook"], p["attributes"]["oom.hook.role"], p["value"])
                       for p in rx.metric_points("otel_oom.hooks.attached", latest=True))
        assert hooks == [("fentry", "context", 1), ("tp_btf", "victim", 1)]
        (unobserved,) = rx.metric_points("oom.kills.unobserved", latest=True)
        assert unobserved["value"] == 2 and unobserved["unit"] == "{kill}" and unobserved["kind"] == "gauge"
        failures = {p["attributes"]["signal"]: p["value"]
                    for p in rx.metric_points("otel_oom.export.failures", latest=True)}
        assert failures == {"logs": 0, "metrics": 0}
        # no pid (an unbounded value) on any metric
        for name in rx.metric_names():
            for point in rx.metric_points(name):
                assert not any("pid" in k for k in point["attributes"])


def test_failed_exports_are_counted_per_signal(machine, clean_env):
    with OtlpGrpcReceiver() as rx:
        clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint)
        clean_env.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
        clean_env.setenv("OTEL_METRIC_EXPORT_INTERVAL", "3600000")
        m = Metrics(resource_for(machine), resolve_otlp(os.environ))
        sender = LogSender(resource_for(machine), resolve_otlp(os.environ).logs,
                           on_failure=lambda: m.record_export_failure("logs"))
        rx.fail_with(grpc.StatusCode.UNAVAILABLE)
        assert sender.send([memcg_kill()]).ok is False
        m.force_flush()  # rejected too
        rx.fail_with(None)
        m.force_flush()
        failures = {p["attributes"]["signal"]: p["value"]
                    for p in rx.metric_points("otel_oom.export.failures", latest=True)}
        assert failures == {"logs": 1, "metrics": 1}
        m.shutdown()
        sender.shutdown()


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
@pytest.mark.parametrize("preference", ["cumulative", "delta", "lowmemory"])
def test_the_metric_temporality_preference_is_honoured(machine, protocol, preference):
    receiver = OtlpGrpcReceiver if protocol == "grpc" else OtlpHttpReceiver
    with receiver() as rx:
        m = Metrics(resource_for(machine), resolve_otlp({
            "OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": preference.upper(),
            "OTEL_METRIC_EXPORT_INTERVAL": "3600000"}), **stats())
        for _ in range(2):
            m.record_kill(memcg_kill())
            assert m.force_flush()
        m.shutdown()
        kills = rx.metric_points("oom.kills")[:2]
        dropped = [p for p in rx.metric_points("otel_oom.events.dropped") if p["attributes"]["reason"] == "ringbuf_full"]
    delta, cumulative = 1, 2   # AGGREGATION_TEMPORALITY_DELTA, _CUMULATIVE
    # the specification's table: a counter is delta under delta and lowmemory, an observable counter
    # under delta only
    assert [(p["value"], p["temporality"]) for p in kills] == (
        [(1, cumulative), (2, cumulative)] if preference == "cumulative" else [(1, delta), (1, delta)])
    assert [(p["value"], p["temporality"]) for p in dropped[:2]] == (
        [(3, delta), (0, delta)] if preference == "delta" else [(3, cumulative), (3, cumulative)])


def test_the_default_histogram_aggregation_can_be_exponential(machine):
    with OtlpHttpReceiver() as rx:
        base = {"OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_METRIC_EXPORT_INTERVAL": "3600000"}
        for env in (base, {**base, "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION":
                           "base2_exponential_bucket_histogram"}):
            m = Metrics(resource_for(machine), resolve_otlp(env))
            m.record_kill(memcg_kill())
            assert m.force_flush()
            m.shutdown()
        kinds = [p["kind"] for p in rx.metric_points("oom.victim.rss")]
        explicit = rx.metric_points("oom.victim.rss")[0]
    assert kinds[0] == "histogram" and explicit["explicit_bounds"] == list(RSS_BUCKETS)  # the advised buckets
    assert kinds[-1] == "exponential_histogram"


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_a_metric_export_the_collector_asks_to_retry_is_retried_and_a_rejected_one_counted_once(
        machine, protocol, caplog):
    receiver = OtlpGrpcReceiver if protocol == "grpc" else OtlpHttpReceiver
    unavailable, invalid = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INVALID_ARGUMENT) if protocol == "grpc" \
        else (503, 400)
    with receiver() as rx:
        m = Metrics(resource_for(machine), resolve_otlp({
            "OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OTEL_METRIC_EXPORT_INTERVAL": "3600000"}))
        rx.fail_with(unavailable, count=1, signal="metrics", retry_after=1)
        m.record_kill(memcg_kill())
        assert m.force_flush(timeout_millis=60_000)   # retried after the collector's 1 s
        assert [r["fault"] for r in rx.requests if r["signal"] == "metrics"] == [unavailable, None]
        rx.fail_with(invalid, signal="metrics")
        with caplog.at_level(logging.WARNING, logger="otel_oom.otlp"):
            for _ in range(2):
                m.force_flush(timeout_millis=60_000)
        assert [r["fault"] for r in rx.requests if r["signal"] == "metrics"] == [unavailable, None, invalid, invalid]
        assert caplog.text.count("metrics export failed (rejected)") == 1   # once per outage
        rx.fail_with(None)
        assert m.force_flush()
        failures = {p["attributes"]["signal"]: p["value"]
                    for p in rx.metric_points("otel_oom.export.failures", latest=True)}
        assert failures == {"logs": 0, "metrics": 2}
        m.shutdown()


def test_default_export_interval_is_15_seconds(machine, clean_env):
    clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    m = Metrics(resource_for(machine), resolve_otlp(os.environ))
    try:
        assert m.export_interval_millis == 15000
    finally:
        m.shutdown(timeout_millis=100)


def test_prometheus_registry_without_otlp(machine):
    m = Metrics(resource_for(machine), None, prometheus=True, **stats())
    m2 = Metrics(resource_for(machine), None, prometheus=True)  # registries do not collide
    m.record_kill(memcg_kill())
    text = generate_latest(m.prometheus_registry).decode()
    assert 'oom_kills_total{container_runtime_name="containerd",oom_constraint="memcg",oom_killer="kernel",' \
           'oom_victim_pod_qos_class="burstable"' in text
    assert CID not in text and POD not in text
    assert 'oom_victim_rss_bytes_bucket{le="67108864.0",oom_constraint="memcg"' in text
    assert 'otel_oom_events_dropped_total{otel_scope_name="otel_oom",otel_scope_schema_url="",' \
           'otel_scope_version="' + __version__ + '",reason="ringbuf_full"} 3.0' in text
    assert 'oom_hook="tp_btf",oom_hook_role="victim"' in text
    assert "oom_kills_unobserved{" in text and "} 2.0" in text
    assert "oom_kills_total{" not in generate_latest(m2.prometheus_registry).decode()
    m.shutdown()
    m2.shutdown()


def test_a_failing_stats_callback_does_not_stop_the_other_metrics(machine, caplog):
    def broken():
        raise RuntimeError("stats source broke")

    m = Metrics(resource_for(machine), None, prometheus=True, drop_counts=broken)
    m.record_kill(memcg_kill())
    with caplog.at_level(logging.ERROR, logger="otel_oom.otlp"):
        text = generate_latest(m.prometheus_registry).decode()
    assert "oom_kills_total{" in text
    assert "metric callback for otel_oom.events.dropped failed" in caplog.text
    m.shutdown()


# ---- validation ---------------------------------------------------------------------------------

@pytest.mark.parametrize("env, needle", [
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"}, "OTEL_EXPORTER_OTLP_PROTOCOL must be grpc or http/protobuf"),
    ({"OTEL_EXPORTER_OTLP_LOGS_PROTOCOL": "http/json"}, "http/json is not supported"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "not a url"}, "OTEL_EXPORTER_OTLP_ENDPOINT must be a URL"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"}, "without http:// or https:// makes the exporter use TLS"),
    ({"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "ftp://collector"}, "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT must be"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:43x7"}, "invalid port"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://:4317"}, "must be a URL"),
    ({"OTEL_EXPORTER_OTLP_CERTIFICATE": "/nonexistent/ca.pem"}, "cannot read '/nonexistent/ca.pem'"),
    ({"OTEL_EXPORTER_OTLP_CLIENT_KEY": READABLE}, "needs both"),
    ({"OTEL_EXPORTER_OTLP_CLIENT_KEY": READABLE, "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": READABLE},
     "ignored over gRPC unless OTEL_EXPORTER_OTLP_CERTIFICATE is set too"),
    ({"OTEL_EXPORTER_OTLP_TIMEOUT": "10s"}, "OTEL_EXPORTER_OTLP_TIMEOUT must be a positive number of seconds"),
    ({"OTEL_EXPORTER_OTLP_LOGS_TIMEOUT": "0"}, "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT must be a positive"),
    ({"OTEL_EXPORTER_OTLP_INSECURE": "yes"}, "must be true or false"),
    ({"OTEL_EXPORTER_OTLP_COMPRESSION": "none"}, "must be gzip (or unset) for grpc"),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_COMPRESSION": "brotli"},
     "must be gzip or deflate or none"),
    ({"OTEL_METRIC_EXPORT_INTERVAL": "15s"}, "OTEL_METRIC_EXPORT_INTERVAL must be a positive number"),
])
def test_validation_names_the_variable_in_one_line(env, needle):
    with pytest.raises(ConfigError) as e:
        resolve_otlp(env)
    msg = str(e.value)
    assert needle in msg, msg
    assert "\n" not in msg
    assert isinstance(e.value, UsageError) and e.value.exit_code == 2


def test_validation_never_shows_secrets():
    with pytest.raises(ConfigError) as e:
        resolve_otlp({"OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20topsecret,garbage"})
    assert "item 2" in str(e.value) and "topsecret" not in str(e.value) and "garbage" not in str(e.value)
    with pytest.raises(ConfigError) as e:
        resolve_otlp({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector.example:4317"})
    with pytest.raises(ConfigError) as e:
        resolve_otlp({"OTEL_EXPORTER_OTLP_ENDPOINT": "ftp://admin:hunter2@collector:21"})
    assert "hunter2" not in str(e.value) and "***@collector:21" in str(e.value)


@pytest.mark.parametrize("value, why", [
    ('authorization="Bearer%20topsecret"', "has a quote in its value"),
    ("authorization=Bearer topsecret", "has a space in its value"),
    ("authorization=Bearer%20topsecret\r\nx-evil=1", "line break or control character"),
    ("authorization=Bearer%0d%0atopsecret", "decodes to a control"),
    ("authorization topsecret", "is not key=value"),
    ("=topsecret", "is not key=value"),
    ("auth/x=topsecret", "has a key that is not a header name"),
    ("x-ok=1,authorization=top;secret", "must be URL-encoded"),
])
def test_malformed_headers_fail_in_one_line_without_the_value(value, why):
    # the SDK would print such an item in a warning and drop the header silently
    for var in ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_LOGS_HEADERS"):
        with pytest.raises(ConfigError) as e:
            resolve_otlp({var: value})
        msg = str(e.value)
        assert msg.startswith(var + " item ") and why in msg and "\n" not in msg, msg
        assert "topsecret" not in msg and "secret" not in msg.replace("values are not shown", "")


def test_headers_are_decoded_once_per_signal_and_user_info_becomes_basic_auth():
    s = resolve_otlp({"OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer%20abc,X-Tenant=t1",
                      "OTEL_EXPORTER_OTLP_METRICS_HEADERS": "x-tenant=m",
                      "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://otel:pa%40ss@collector:4317"})
    assert s.metrics.headers == (("x-tenant", "m"),)  # per-signal replaces the generic one, as in the SDK
    assert s.logs.headers == (("authorization", "Bearer abc"), ("x-tenant", "t1"))
    s = resolve_otlp({"OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://otel:pa%40ss@collector:4317"})
    assert dict(s.logs.headers)["authorization"] == "Basic b3RlbDpwYUBzcw=="  # otel:pa@ss
    assert s.logs.endpoint.without_credentials == "http://collector:4317" and s.logs.endpoint.authority == "collector:4317"
    assert {"otel:pa%40ss", "pa%40ss", "pa@ss"} <= set(s.secrets())


def test_sdk_variables_on_our_paths_fail_in_one_line():
    for var, value in [("OTEL_ATTRIBUTE_COUNT_LIMIT", "abc"), ("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "-1"),
                       ("OTEL_LOGRECORD_ATTRIBUTE_COUNT_LIMIT", "1.5"),
                       ("OTEL_LOGRECORD_ATTRIBUTE_VALUE_LENGTH_LIMIT", "ten"),
                       ("OTEL_METRIC_EXPORT_TIMEOUT", "5s"), ("OTEL_METRICS_EXEMPLAR_FILTER", "sometimes"),
                       ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "weekly"),
                       ("OTEL_PYTHON_EXPORTER_OTLP_GRPC_RETRYABLE_ERROR_CODES", "UNAVAILABLE,NOPE"),
                       ("OTEL_SDK_DISABLED", "maybe")]:
        with pytest.raises(ConfigError) as e:
            resolve_otlp({var: value})
        assert str(e.value).startswith(var) and "\n" not in str(e.value), str(e.value)
    resolve_otlp({"OTEL_ATTRIBUTE_COUNT_LIMIT": "unset", "OTEL_LOGRECORD_ATTRIBUTE_COUNT_LIMIT": "64",
                  "OTEL_PYTHON_EXPORTER_OTLP_GRPC_RETRYABLE_ERROR_CODES": "unavailable, aborted"})


def test_a_good_environment_passes(pki):
    resolve_otlp({})
    resolve_otlp({
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector.monitoring:4317",
        "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://[::1]:4318/v1/logs",
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20x,x-scope-orgid=tenant",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2.5",
        "OTEL_EXPORTER_OTLP_CERTIFICATE": pki.ca_cert, "OTEL_EXPORTER_OTLP_CLIENT_KEY": pki.client_key,
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": pki.client_cert, "OTEL_EXPORTER_OTLP_INSECURE": "false",
        "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION": "gzip", "OTEL_EXPORTER_OTLP_LOGS_COMPRESSION": "deflate",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
    })


def test_a_per_signal_http_endpoint_without_path_is_warned_about(caplog):
    with caplog.at_level(logging.WARNING, logger="otel_oom.otlp"):
        resolve_otlp({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                                   "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://collector:4318"})
    assert "usually ends in /v1/logs" in caplog.text


def test_a_timeout_in_milliseconds_is_warned_about(caplog):
    with caplog.at_level(logging.WARNING, logger="otel_oom.otlp"):
        resolve_otlp({"OTEL_EXPORTER_OTLP_TIMEOUT": "10000"})
    assert "read as seconds" in caplog.text


def test_an_empty_endpoint_variable_means_unset():
    # before, '' passed validation, the ready line claimed localhost:4317 and the SDK got '' (every export failed)
    for env in ({"OTEL_EXPORTER_OTLP_ENDPOINT": ""}, {"OTEL_EXPORTER_OTLP_ENDPOINT": "  "},
                {"OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "", "OTEL_EXPORTER_OTLP_ENDPOINT": ""}):
        s = resolve_otlp(env)
        assert s.logs.endpoint.text == s.metrics.endpoint.text == "http://localhost:4317"
        assert s.logs.endpoint.authority == "localhost:4317"
    s = resolve_otlp({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_ENDPOINT": ""})
    assert s.logs.endpoint.text == "http://localhost:4318/v1/logs"


def test_the_resolved_endpoint_is_the_one_used(machine, clean_env):
    # the environment handed to the agent decides, not whatever os.environ holds
    with OtlpGrpcReceiver() as rx:
        clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # a decoy
        sender = LogSender(resource_for(machine), resolve_otlp({"OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint}).logs)
        assert sender.send([memcg_kill()]).ok
        sender.shutdown()
        assert rx.log_count() == 1


def test_a_metrics_shutdown_out_of_time_is_one_warning_not_a_traceback(caplog):
    """Seen in the QEMU kernel matrix under load: the final export outlasted --shutdown-timeout and
    the SDK raised for the readers it had no time left for, which the agent logged as a traceback."""
    from otel_oom.otlp.metrics import Metrics
    from otel_oom.otlp.resource import build_resource

    m = Metrics(build_resource({}), None, prometheus=True)
    with caplog.at_level(logging.WARNING, logger="otel_oom.otlp"):
        m.shutdown(timeout_millis=0)  # no time at all: every reader fails
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["final metric export did not complete"]
