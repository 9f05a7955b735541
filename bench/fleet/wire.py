"""What the fleet simulation takes from the agent's package besides its spool, send loop and exporter
(feed.py): its resource, its metrics, and a spooled message's name and id for the run's accounting.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from otel_oom.schema.records import OomKill, Record

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource


def name_and_id(message: bytes) -> tuple[str, str]:
    """A spooled log record's event name (`oom.kill`, ...) and id (`oom.event.id` on a kill,
    `oom.record.id` on the others)."""
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

    record = LogRecord.FromString(message)
    attrs = {kv.key: kv.value.string_value for kv in record.attributes}
    return record.event_name, attrs.get("oom.event.id") or attrs["oom.record.id"]


def node_resource(node_name: str, machine_id: str, scratch: Path) -> "Resource":
    """The resource the agent on `node_name` reports under (as in a DaemonSet pod: K8S_NODE_NAME
    set, the host's machine id mounted), built by the agent's own code."""
    from otel_oom.otlp.resource import build_resource

    path = scratch / f"machine-id-{node_name}"
    path.write_text(machine_id + "\n")
    return build_resource({"K8S_NODE_NAME": node_name}, machine_id_path=str(path), hostname=node_name,
                          boot_id_path=os.devnull)


class AgentMetrics:
    """One node agent's own metrics (oom.kills, oom.victim.rss, its health), exported over OTLP/HTTP
    to the node Collector every `interval_ms` by the agent's metrics code, as `otel-oom run` does."""

    def __init__(self, resource: "Resource", collector_http: str, interval_ms: int) -> None:
        from otel_oom.otlp.env import resolve_otlp
        from otel_oom.otlp.metrics import Metrics

        otlp = resolve_otlp({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                             "OTEL_EXPORTER_OTLP_ENDPOINT": collector_http,
                             "OTEL_METRIC_EXPORT_INTERVAL": str(interval_ms)})
        # a healthy agent: its victim hook attached, nothing dropped, nothing unobserved
        self._metrics = Metrics(resource, otlp, drop_counts=lambda: {}, fault_counts=lambda: {},
                                hooks=lambda: [("tp_btf", "victim")], unobserved=lambda: 0)

    def record(self, record: Record) -> None:
        if isinstance(record, OomKill):
            self._metrics.record_kill(record)
        else:
            self._metrics.record_event(record)

    def shutdown(self) -> None:
        self._metrics.shutdown(timeout_millis=2000)
