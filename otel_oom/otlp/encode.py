"""The schema's records as OTLP protobuf: a `LogRecord` (logs.proto) and a `Span` (trace.proto), built
with opentelemetry-proto's generated messages and serialized once, by the worker, as the record is
stored; the sender then only concatenates (`requests.py`).

The messages are given their fields as plain dicts, so the per-attribute work happens inside the
protobuf runtime: measured per kill (32 attributes), as fast as writing the wire format by hand was,
and three to four times faster than the SDK's LogRecord objects and private encoder together.
Nothing here is imported before the first record is stored (`spooled.py` loads it then).

Values follow the SDK's encoder (`_encode_value`): bool, str, int (int64), float, bytes,
list/tuple (array), dict (kvlist), None (an empty value). A string holding raw kernel bytes (lone
surrogates) goes as `text.for_otlp` says, as bytes_value, so the schema's attributes are taken as
decoded (`raw`) and each string is checked once, here. An attribute whose value cannot be encoded
(an int past int64, a type OTLP has not) is left out and logged, as the SDK's encoder did.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Optional

from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from ..schema.log_records import LogRecordFields
from ..schema.spans import SpanFields
from ..text import for_otlp
from .env import AttributeLimits

log = logging.getLogger("otel_oom.otlp")

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
# log record flags: the W3C trace flags, sampled (what the SDK's span context for a record carried)
TRACE_FLAGS_SAMPLED = 1
# span flags: the SDK marks every span it encodes as one whose "is remote" is known (and not remote)
SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE = 0x100


def any_value(v: Any) -> Optional[dict[str, Any]]:
    """An `AnyValue` as the dict its constructor takes, or None for a value OTLP cannot carry."""
    t = type(v)
    if t is str:
        if v.isascii():
            return {"string_value": v}
        otlp = for_otlp(v)  # raw kernel bytes (lone surrogates): bytes_value
        return {"bytes_value": otlp} if isinstance(otlp, bytes) else {"string_value": otlp}
    if t is int:
        return {"int_value": v} if _INT64_MIN <= v <= _INT64_MAX else None
    if t is bool:
        return {"bool_value": v}
    if t is bytes:
        return {"bytes_value": v}
    if t is float:
        return {"double_value": v}
    if t is list or t is tuple:
        items = [any_value(x) for x in v]
        return None if None in items else {"array_value": {"values": items}}
    if t is dict:
        return {"kvlist_value": {"values": key_values(v)}}
    if v is None:
        return {}  # an empty AnyValue, as the SDK's encoder sends None (the schema leaves unknown values out)
    # subclasses (an IntEnum, a str subclass): the SDK's isinstance order
    base: Any
    for base in (bool, str, int, float, bytes, tuple, list, dict):
        if isinstance(v, base):
            return any_value(base(v))
    return None


def key_values(attrs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """`attrs` as `KeyValue` dicts, in order; values OTLP cannot carry are left out (and logged)."""
    out = []
    for key, value in attrs.items():
        av = any_value(value)
        if av is None:
            log.error("attribute %s: a %s value cannot be sent over OTLP; left out", key, type(value).__name__)
            continue
        out.append({"key": key, "value": av})
    return out


def log_record(f: LogRecordFields, limits: AttributeLimits = AttributeLimits()) -> bytes:
    """A serialized `LogRecord` without its observed time (the sender adds it, one per request)."""
    attrs, dropped = limits.apply(f.attributes)
    traced = bool(f.trace_id and f.span_id)
    return LogRecord(
        time_unix_nano=f.time_unix_nano, severity_number=f.severity_number,  # type: ignore[arg-type]
        severity_text=f.severity_text, body={"string_value": f.body},  # type: ignore[arg-type]
        attributes=key_values(attrs), dropped_attributes_count=dropped,  # type: ignore[arg-type]
        flags=TRACE_FLAGS_SAMPLED if traced else 0,
        trace_id=bytes.fromhex(f.trace_id) if traced else b"",  # type: ignore[arg-type]
        span_id=bytes.fromhex(f.span_id) if traced else b"",  # type: ignore[arg-type]
        event_name=f.event_name).SerializeToString()


def span(s: SpanFields) -> bytes:
    """A serialized `Span` (trace.proto is loaded by the first: only --traces makes spans)."""
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    return Span(
        trace_id=bytes.fromhex(s.trace_id), span_id=bytes.fromhex(s.span_id), name=s.name,
        kind=s.kind,  # type: ignore[arg-type]
        start_time_unix_nano=s.start_unix_nano, end_time_unix_nano=s.end_unix_nano,
        attributes=key_values(s.attributes),  # type: ignore[arg-type]
        events=[{"time_unix_nano": e.time_unix_nano, "name": e.name,  # type: ignore[misc]
                 "attributes": key_values(e.attributes)} for e in s.events],
        status={"code": s.status_code, "message": s.status_message},  # type: ignore[arg-type]
        flags=SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE).SerializeToString()
