"""The encoder, value by value, read back with opentelemetry-proto's generated messages; the attribute
limits; and the spool payload format (signal, id, message)."""
from __future__ import annotations

import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue, KeyValueList
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otel_oom.otlp import encode
from otel_oom.otlp.env import AttributeLimits, log_record_limits
from otel_oom.otlp.requests import varint
from otel_oom.otlp.spooled import LOGS, TRACES, SpoolCodec
from otel_oom.schema.log_records import LogRecordFields
from otel_oom.schema.records import OomEpisode, OomKill, OomReclaim


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 16383, 16384, 2**32, 2**63 - 1, 2**64 - 1])
def test_varint(n):
    b = varint(n)
    # an int64 field of AnyValue reads it back (two's complement above 2**63)
    got = AnyValue.FromString(b"\x18" + b).int_value
    assert got == (n if n < 2**63 else n - 2**64)
    assert len(b) == max(1, -(-n.bit_length() // 7))


@pytest.mark.parametrize("value, expected", [
    ("", AnyValue(string_value="")),
    ("caf\u00e9 \U0001f600", AnyValue(string_value="caf\u00e9 \U0001f600")),
    ("x" * 200, AnyValue(string_value="x" * 200)),
    (b"\xff\x00", AnyValue(bytes_value=b"\xff\x00")),
    ("x\udcff", AnyValue(bytes_value=b"x\xff")),            # raw kernel bytes, as text.for_otlp sends them
    ("\ud800x", AnyValue(bytes_value=b"\\ud800x")),         # a surrogate no kernel byte made: visible
    (True, AnyValue(bool_value=True)),
    (False, AnyValue(bool_value=False)),
    (0, AnyValue(int_value=0)),
    (-1, AnyValue(int_value=-1)),
    (-(2**63), AnyValue(int_value=-(2**63))),
    (2**63 - 1, AnyValue(int_value=2**63 - 1)),
    (0.0, AnyValue(double_value=0.0)),
    (-12.5, AnyValue(double_value=-12.5)),
    ([3, 4], AnyValue(array_value={"values": [AnyValue(int_value=3), AnyValue(int_value=4)]})),
    ((), AnyValue(array_value={})),
    (["a", b"\xfe"], AnyValue(array_value={"values": [AnyValue(string_value="a"), AnyValue(bytes_value=b"\xfe")]})),
    ({"k": 1}, AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key="k", value=AnyValue(int_value=1))]))),
    (None, AnyValue()),
])
def test_any_value_is_what_the_sdks_encoder_made(value, expected):
    got = KeyValue(key="k", value=encode.any_value(value))  # type: ignore[arg-type]
    assert got.value == expected and got.value.WhichOneof("value") == expected.WhichOneof("value")
    assert got.SerializeToString() == KeyValue(key="k", value=expected).SerializeToString()


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, object(), [1, 2**64]])
def test_a_value_otlp_cannot_carry_is_left_out_with_a_log_line(value, caplog):
    assert encode.any_value(value) is None
    r = LogRecord(attributes=encode.key_values({"a": 1, "bad": value, "b": "x"}))  # type: ignore[arg-type]
    assert [kv.key for kv in r.attributes] == ["a", "b"]
    assert "attribute bad" in caplog.text


def test_a_log_record_with_and_without_a_trace():
    f = LogRecordFields(123, "oom.kill", 17, "ERROR", "body \u00e9", {"process.pid": 7, "oom.recovered": False},
                        "0" * 31 + "1", "f" * 16)
    r = LogRecord.FromString(LogRecord(observed_time_unix_nano=99).SerializeToString() + encode.log_record(f))
    assert (r.time_unix_nano, r.observed_time_unix_nano, r.severity_number, r.severity_text) == (123, 99, 17, "ERROR")
    assert r.body.string_value == "body \u00e9" and r.event_name == "oom.kill" and r.flags == 1
    assert r.trace_id == bytes(15) + b"\x01" and r.span_id == b"\xff" * 8 and r.dropped_attributes_count == 0
    assert [(kv.key, kv.value.WhichOneof("value")) for kv in r.attributes] == [("process.pid", "int_value"),
                                                                           ("oom.recovered", "bool_value")]
    untraced = LogRecord.FromString(encode.log_record(LogRecordFields(0, "e", 9, "", "", {})))
    assert untraced == LogRecord(severity_number=9, event_name="e", body=AnyValue(string_value=""))


def test_attribute_limits_cut_strings_then_drop_the_first_attributes():
    attrs = {"a": "abcdefgh", "b": b"abcdefgh", "c": ["abcdefgh", 5], "d": 12345678, "e": "xy"}
    assert AttributeLimits().apply(attrs) == (attrs, 0)
    got, dropped = AttributeLimits(count=3, length=3).apply(attrs)
    assert dropped == 2 and got == {"c": ("abc", 5), "d": 12345678, "e": "xy"}
    assert AttributeLimits(count=0).apply(attrs) == ({}, 5)
    assert AttributeLimits(count=None, length=None).apply(attrs) == (attrs, 0)
    r = LogRecord.FromString(encode.log_record(LogRecordFields(1, "e", 9, "INFO", "b", attrs), AttributeLimits(count=2)))
    assert [kv.key for kv in r.attributes] == ["d", "e"] and r.dropped_attributes_count == 3


def test_the_limits_are_read_as_the_sdk_reads_them():
    assert log_record_limits({}) == AttributeLimits(128, None)
    assert log_record_limits({"OTEL_ATTRIBUTE_COUNT_LIMIT": "unset"}) == AttributeLimits(128, None)
    assert log_record_limits({"OTEL_ATTRIBUTE_COUNT_LIMIT": "5", "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "9"}) == \
        AttributeLimits(5, 9)
    assert log_record_limits({"OTEL_ATTRIBUTE_COUNT_LIMIT": "5", "OTEL_LOGRECORD_ATTRIBUTE_COUNT_LIMIT": "unset",
                              "OTEL_LOGRECORD_ATTRIBUTE_VALUE_LENGTH_LIMIT": " 4 "}) == AttributeLimits(None, 4)


def kill(**over) -> OomKill:
    base = dict(event_id="b:1:7", time_unix_nano=5, boot_time_ns=1, hook="tp_btf", context_hook="none",
                recovered=False, victim_pid=7, victim_tid=7, victim_comm="x\udcff")
    base.update(over)
    return OomKill(**base)  # type: ignore[arg-type]


def test_the_spool_payload_is_the_message_behind_its_signal():
    codec = SpoolCodec()
    payload = codec.encode(kill())
    assert payload[:2] == b"\x01\x01" and not payload.startswith(b"{")
    item = codec.decode(payload)
    assert item.signal == LOGS and payload == b"\x01\x01" + item.message
    r = LogRecord.FromString(item.message)
    assert r.event_name == "oom.kill" and {kv.key: kv.value for kv in r.attributes}["process.executable.name"] == \
        AnyValue(bytes_value=b"x\xff")
    ep = OomEpisode("a" * 32, "b" * 16, 1, 2, "host", "pressure", "cleared")
    item = codec.decode(codec.encode(ep))
    assert item.signal == TRACES
    assert Span.FromString(item.message).name == "oom.episode"


def test_a_json_payload_from_an_older_agent_reads_as_the_same_message():
    codec = SpoolCodec()
    for record in (kill(), OomReclaim("r1", 9, "b:1:7", "exit", 5, 7, 7, "x")):
        assert codec.decode(record.to_json().encode()) == codec.decode(codec.encode(record))
