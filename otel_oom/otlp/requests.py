"""Export requests from spooled messages, and spooled messages back in a form an operator can read.

The parts every request shares are built once, with opentelemetry-proto's generated messages: the
resource (the SDK `Resource` of `resource.py`, converted here) inside a `ResourceLogs` /
`ResourceSpans`, and the scope (`otel_oom`, the agent's version) inside a `ScopeLogs` /
`ScopeSpans`. A request is then those parts and the records' messages, concatenated: protobuf
appends a repeated field's elements by writing them one after the other, so

    ExportLogsServiceRequest { resource_logs: ResourceLogs { resource, scope_logs: ScopeLogs {
        scope, log_records: observed time + spooled LogRecord, ... } } }

is written without parsing or re-encoding a record. The observed time (`ObservedTimestamp`) is the
time of the request, one for all its records, as the SDK's exporter set it.
"""
from __future__ import annotations

import base64
import time
from typing import TYPE_CHECKING, Any, Optional, Sequence

from .. import __version__
from ..schema.mapping import SCOPE_NAME
from .spooled import LOGS

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource

_ONE_BYTE = [bytes((i,)) for i in range(128)]


def varint(n: int) -> bytes:
    """A length as a protobuf varint (what precedes every length-delimited field)."""
    if n < 128:
        return _ONE_BYTE[n]
    out = bytearray()
    while n >= 128:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _proto_value(v: Any) -> Any:
    """An attribute value as the generated `AnyValue` (the SDK's `_encode_value` rules)."""
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList

    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, str):
        return AnyValue(string_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    if isinstance(v, bytes):
        return AnyValue(bytes_value=v)
    if isinstance(v, dict):
        return AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key=str(k), value=_proto_value(x))
                                                          for k, x in v.items()]))
    return AnyValue(array_value=ArrayValue(values=[_proto_value(x) for x in v]))


def proto_resource(resource: "Resource") -> Any:
    """The SDK resource as opentelemetry-proto's `Resource`."""
    from opentelemetry.proto.common.v1.common_pb2 import KeyValue
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource as ProtoResource

    return ProtoResource(attributes=[KeyValue(key=k, value=_proto_value(v)) for k, v in resource.attributes.items()])


class Requests:
    """Export requests (serialized) for one resource and otel-oom's scope."""

    def __init__(self, resource: "Resource") -> None:
        from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
        from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

        self._observed = lambda ns: LogRecord(observed_time_unix_nano=ns).SerializeToString()
        self._resource = proto_resource(resource)
        self._scope = InstrumentationScope(name=SCOPE_NAME, version=__version__)
        self._heads: dict[str, tuple[bytes, bytes]] = {}

    def _head(self, signal: str) -> tuple[bytes, bytes]:
        """The serialized ResourceLogs/ResourceSpans and ScopeLogs/ScopeSpans without their records,
        made at the signal's first request (trace.proto only with --traces)."""
        if signal == LOGS:
            from opentelemetry.proto.logs.v1 import logs_pb2

            head = (logs_pb2.ResourceLogs(resource=self._resource).SerializeToString(),
                    logs_pb2.ScopeLogs(scope=self._scope).SerializeToString())
        else:
            from opentelemetry.proto.trace.v1 import trace_pb2

            head = (trace_pb2.ResourceSpans(resource=self._resource).SerializeToString(),
                    trace_pb2.ScopeSpans(scope=self._scope).SerializeToString())
        self._heads[signal] = head
        return head

    def build(self, signal: str, messages: Sequence[bytes], observed_ns: Optional[int] = None) -> bytes:
        """An ExportLogsServiceRequest (LogRecords) or ExportTraceServiceRequest (Spans) holding `messages`."""
        resource_head, scope_head = self._heads.get(signal) or self._head(signal)
        parts: list[bytes] = [scope_head]
        if signal == LOGS:
            # LogRecord.observed_time_unix_nano alone; a message's fields may come in any order
            observed = self._observed(time.time_ns() if observed_ns is None else observed_ns)
            for m in messages:  # ScopeLogs.log_records (2)
                parts += (b"\x12", varint(len(m) + len(observed)), observed, m)
        else:
            for m in messages:  # ScopeSpans.spans (2)
                parts += (b"\x12", varint(len(m)), m)
        scope = b"".join(parts)
        # ResourceLogs.scope_logs / ResourceSpans.scope_spans (2), inside the request's field 1
        inner = len(resource_head) + 1 + len(varint(len(scope))) + len(scope)
        return b"".join((b"\x0a", varint(inner), resource_head, b"\x12", varint(len(scope)), scope))


def readable(signal: str, message: bytes) -> dict[str, Any]:
    """A spooled message as plain JSON-able data (for parked.jsonl): strings sent as bytes (raw kernel
    bytes) come back as text with \\udcNN for each byte that is not UTF-8, as on `--json` lines."""
    try:
        out = _readable(signal, message)
    except Exception:  # noqa: BLE001 - not a message this agent can parse: kept as it is
        out = {"unparsable": True}
    out["otlp_base64"] = base64.b64encode(message).decode("ascii")  # the message itself, to replay by hand
    return out


def _readable(signal: str, message: bytes) -> dict[str, Any]:
    if signal == LOGS:
        from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

        r = LogRecord.FromString(message)
        out: dict[str, Any] = {"time_unix_nano": r.time_unix_nano, "event_name": r.event_name,
                               "severity_number": r.severity_number, "severity_text": r.severity_text,
                               "body": _plain(r.body), "attributes": _plain_kvs(r.attributes)}
        if r.trace_id:
            out.update(trace_id=r.trace_id.hex(), span_id=r.span_id.hex())
    else:
        from opentelemetry.proto.trace.v1.trace_pb2 import Span

        s = Span.FromString(message)
        out = {"name": s.name, "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
               "start_time_unix_nano": s.start_time_unix_nano, "end_time_unix_nano": s.end_time_unix_nano,
               "status": {"code": s.status.code, "message": s.status.message},
               "attributes": _plain_kvs(s.attributes),
               "events": [{"name": e.name, "time_unix_nano": e.time_unix_nano, "attributes": _plain_kvs(e.attributes)}
                          for e in s.events]}
    return out


def _plain_kvs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _plain(kv.value) for kv in kvs}


def _plain(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "bytes_value":
        return v.bytes_value.decode("utf-8", "surrogateescape")
    if kind == "array_value":
        return [_plain(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return _plain_kvs(v.kvlist_value.values)
    return getattr(v, kind)
