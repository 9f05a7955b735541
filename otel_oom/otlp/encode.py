"""The schema's records as OTLP protobuf, written directly: a `LogRecord` (logs.proto) and a `Span`
(trace.proto) as the bytes of the message, and the key-values both are made of.

Why by hand, not through the generated classes: the worker encodes every record once, as it
stores it in the spool, and the sender then only concatenates (`requests.py`). Per kill (55
attributes) this costs about a third of building the same message with opentelemetry-proto's
generated classes and a sixth of the SDK's encoder, and it imports nothing: it runs before the
SDK is loaded, and a console-only agent never loads protobuf at all. The wire format is the
protobuf encoding of those messages field for field: what the SDK's encoder sent (field order
aside: `ObservedTimestamp` is put in front by the sender, and a parser takes fields in any order).
`tests/unit/otlp/test_encode.py` parses what this writes with the generated classes and compares
it with golden requests made by the SDK's encoder.

Value types follow the SDK's encoder (`_encode_value`): bool, str, int (int64), float, bytes,
list/tuple (array), dict (kvlist), None (an empty value). A string holding raw kernel bytes (lone
surrogates) goes as `text.for_otlp` says, as bytes_value, so the schema's attributes can be taken
as decoded (`raw`) and each string is checked once, here. An attribute whose value cannot be
encoded is left out and logged, as the SDK's encoder does.
"""
from __future__ import annotations

import logging
import struct
from typing import Any, Mapping, Optional

from ..schema.log_records import LogRecordFields
from ..schema.spans import SpanFields
from ..text import for_otlp
from .env import AttributeLimits

log = logging.getLogger("otel_oom.otlp")

_ONE_BYTE = [bytes((i,)) for i in range(128)]
_FIXED64 = struct.Struct("<Q").pack
_FIXED32 = struct.Struct("<I").pack
_DOUBLE = struct.Struct("<d").pack
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1

# log record flags: the W3C trace flags, sampled (what the SDK's span context for a record carried)
TRACE_FLAGS_SAMPLED = 1
# span flags: the SDK marks every span it encodes as one whose "is remote" is known (and not remote)
SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE = 0x100


def varint(n: int) -> bytes:
    """A non-negative integer as a protobuf varint."""
    if n < 128:
        return _ONE_BYTE[n]
    out = bytearray()
    while n >= 128:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def length_delimited(tag: bytes, payload: bytes) -> bytes:
    return tag + varint(len(payload)) + payload


def observed_time(ns: int) -> bytes:
    """LogRecord.observed_time_unix_nano (field 11, fixed64): prepended by the sender at export."""
    return b"\x59" + _FIXED64(ns)


def any_value(v: Any) -> Optional[bytes]:
    """An `AnyValue` message's bytes, or None for a value OTLP cannot carry (the attribute is left out)."""
    t = type(v)
    if t is str:
        try:
            b = v.encode()
        except UnicodeEncodeError:  # raw kernel bytes (lone surrogates): bytes_value, as `text.for_otlp` says
            return any_value(for_otlp(v))
        return b"\x0a" + varint(len(b)) + b
    if t is int:
        if v >= 0:
            return b"\x18" + varint(v) if v <= _INT64_MAX else None
        return b"\x18" + varint(v + (1 << 64)) if v >= _INT64_MIN else None
    if t is bool:
        return b"\x10\x01" if v else b"\x10\x00"
    if t is bytes:
        return b"\x3a" + varint(len(v)) + v
    if t is float:
        return b"\x21" + _DOUBLE(v)
    if t is list or t is tuple:
        items = []
        for x in v:
            item = any_value(x)
            if item is None:
                return None
            items.append(b"\x0a" + varint(len(item)) + item)
        return length_delimited(b"\x2a", b"".join(items))
    if t is dict:
        return length_delimited(b"\x32", key_values(b"\x0a", v))
    if v is None:
        return b""  # an empty AnyValue, as the SDK's encoder sends None (the schema leaves unknown values out)
    # subclasses (an IntEnum, a str subclass): the SDK's isinstance order
    base: Any
    for base in (bool, str, int, float, bytes, tuple, list, dict):
        if isinstance(v, base):
            return any_value(base(v))
    return None


_KEY_HEADS: dict[str, bytes] = {}  # per attribute name (the schema's, a fixed set): KeyValue.key and value's tag


def _key_head(key: str) -> bytes:
    k = key.encode()
    head = _KEY_HEADS[key] = b"\x0a" + varint(len(k)) + k + b"\x12"
    return head


def key_values(tag: bytes, attrs: Mapping[str, Any]) -> bytes:
    """`attrs` as the repeated KeyValue field `tag` (in order), e.g. LogRecord.attributes."""
    out: list[bytes] = []
    heads = _KEY_HEADS
    for key, value in attrs.items():
        av = any_value(value)
        if av is None:
            log.error("attribute %s: a %s value cannot be sent over OTLP; left out", key, type(value).__name__)
            continue
        head = heads.get(key) or _key_head(key)
        n = len(av)
        vlen = _ONE_BYTE[n] if n < 128 else varint(n)
        m = len(head) + len(vlen) + n
        out += (tag, _ONE_BYTE[m] if m < 128 else varint(m), head, vlen, av)
    return b"".join(out)


def _string(tag: bytes, s: str) -> bytes:
    """A string field; proto3 leaves an empty one out."""
    b = s.encode()
    return tag + varint(len(b)) + b if b else b""


def _fixed64(tag: bytes, n: int) -> bytes:
    """A fixed64 field (a time); proto3 leaves 0 out."""
    return tag + _FIXED64(n) if n else b""


def log_record(f: LogRecordFields, limits: AttributeLimits = AttributeLimits()) -> bytes:
    """A `LogRecord` message without its observed time (the sender's `observed_time` goes in front)."""
    attrs, dropped = limits.apply(f.attributes)
    parts = [_fixed64(b"\x09", f.time_unix_nano),
             b"\x10" + varint(f.severity_number),
             _string(b"\x1a", f.severity_text),
             length_delimited(b"\x2a", any_value(f.body) or b""),
             key_values(b"\x32", attrs),
             b"\x38" + varint(dropped) if dropped else b""]
    if f.trace_id and f.span_id:
        parts += (b"\x45" + _FIXED32(TRACE_FLAGS_SAMPLED), b"\x4a\x10" + bytes.fromhex(f.trace_id),
                  b"\x52\x08" + bytes.fromhex(f.span_id))
    parts.append(_string(b"\x62", f.event_name))
    return b"".join(parts)


def span(s: SpanFields) -> bytes:
    """A `Span` message."""
    events = b"".join(
        length_delimited(b"\x5a", b"".join((_fixed64(b"\x09", e.time_unix_nano), _string(b"\x12", e.name),
                                            key_values(b"\x1a", e.attributes))))
        for e in s.events)
    status = _string(b"\x12", s.status_message) + (b"\x18" + varint(s.status_code) if s.status_code else b"")
    return b"".join((b"\x0a\x10" + bytes.fromhex(s.trace_id), b"\x12\x08" + bytes.fromhex(s.span_id),
                     _string(b"\x2a", s.name), b"\x30" + varint(s.kind),
                     _fixed64(b"\x39", s.start_unix_nano), _fixed64(b"\x41", s.end_unix_nano),
                     key_values(b"\x4a", s.attributes), events, length_delimited(b"\x7a", status),
                     b"\x85\x01" + _FIXED32(SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE)))
