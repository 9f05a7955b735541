"""What a spool payload says, for tests that read the spool as the sender would: the record's OTLP
attributes, whatever format (this agent's protobuf message, or an older agent's JSON) it was stored in."""
from __future__ import annotations

from typing import Any

from otel_oom.otlp.requests import readable
from otel_oom.otlp.spooled import SpoolCodec


def spooled_attributes(payload: bytes) -> dict[str, Any]:
    spooled = SpoolCodec().decode(payload)
    return dict(readable(spooled.signal, spooled.message)["attributes"])
