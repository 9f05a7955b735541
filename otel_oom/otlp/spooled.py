"""What the spool holds for a record: its OTLP message, encoded once by the worker as it is stored,
behind two bytes that say which signal it goes to.

    payload = 0x01 (this format) | signal (0x01: a LogRecord, 0x02: a Span) | message

The message is `encode.log_record` (without its observed time, which the sender adds) or
`encode.span`. The sender builds a request by concatenating these messages (`requests.py`): no
record is decoded or rebuilt on the way out. A payload that starts with "{" was spooled by an agent
from before this format, as the record's JSON (`schema.records.record_from_json`, kills without a
"type" field): it is encoded here when read, to the same message a new agent would have spooled.
An agent from before this format cannot read these payloads: it counts them as spool_undecodable.
Importing this module imports no protobuf: `encode` (opentelemetry-proto) is loaded by the first
record stored, so the start-up before `ready` does not pay for it.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Optional

from ..schema.log_records import log_record
from ..schema.records import OomEpisode, Record, record_from_json
from ..schema.spans import episode_span
from .env import AttributeLimits

FORMAT = 1
LOGS, TRACES = "logs", "traces"
_SIGNALS = {1: LOGS, 2: TRACES}
_HEADS = {LOGS: bytes((FORMAT, 1)), TRACES: bytes((FORMAT, 2))}


@dataclass(frozen=True)
class Spooled:
    signal: str       # LOGS or TRACES
    message: bytes    # a LogRecord without its observed time, or a Span


class SpoolCodec:
    """Records -> spool payloads (the pipeline) and back to what the sender sends (the sender)."""

    def __init__(self, limits: AttributeLimits = AttributeLimits()) -> None:
        self.limits = limits  # OTEL_*ATTRIBUTE*_LIMIT, applied to log records as the SDK did
        self._encode: Optional[ModuleType] = None

    def _encoder(self) -> ModuleType:
        if self._encode is None:
            from . import encode

            self._encode = encode
        return self._encode

    def encode(self, record: Record) -> bytes:
        encode = self._encode or self._encoder()
        if isinstance(record, OomEpisode):
            return _HEADS[TRACES] + encode.span(episode_span(record))
        # raw: the encoder turns strings with raw kernel bytes into bytes_value itself (`text.for_otlp`)
        return _HEADS[LOGS] + encode.log_record(log_record(record, raw=True), self.limits)

    def decode(self, payload: bytes) -> Spooled:
        """ValueError (or TypeError, from an old record's JSON) if the payload cannot be read."""
        if payload[:1] == b"{":
            return self.decode(self.encode(record_from_json(payload)))
        if len(payload) < 2 or payload[0] != FORMAT or payload[1] not in _SIGNALS:
            raise ValueError(f"unknown spool payload starting {payload[:2]!r}: written by a newer otel-oom?")
        return Spooled(_SIGNALS[payload[1]], payload[2:])
