"""Acknowledged export of OOM kills as `oom.kill` log records (and the records around them:
`oom.pressure`, `oom.no_kill`, `oom.reclaim`, mapped by `records.log_record`).

OOM events do not go through the SDK's BatchLogRecordProcessor: it drops a batch the collector
did not take and keeps nothing on disk. `LogSender.send()` builds the records exactly as the SDK's
own processors do, encodes them with the SDK's encoder, sends them once (`transport.py`) and says
what the collector answered (accepted, partly rejected, rejected, too large, retry later), so the
caller keeps events in its spool until they are accepted. This is the only module that touches the
unstable logs SDK (`opentelemetry.sdk._logs`).
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Sequence

from .. import __version__
from ..schema.log_records import log_record
from ..schema.mapping import SCOPE_NAME
from ..schema.records import Record
from .env import SignalSettings
from .transport import RETRY, ExportResult, log_transport

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource

log = logging.getLogger("otel_oom.otlp")


class LogSender:
    """Synchronous, acknowledged export of OOM kills as `oom.kill` log records.

    Everything about the connection (protocol, endpoint, headers, TLS, timeout, compression)
    comes from `env.resolve_otlp`, resolved once from the standard variables.
    """

    def __init__(self, resource: "Resource", signal: SignalSettings,
                 on_failure: Optional[Callable[[], None]] = None) -> None:
        from opentelemetry.sdk._logs import LogRecordLimits
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self.resource = resource
        self.protocol = signal.protocol
        self.endpoint = signal.endpoint
        self.on_failure = on_failure
        self.export_failures = 0
        self._scope = InstrumentationScope(SCOPE_NAME, __version__)
        self._limits = LogRecordLimits()
        self.timeout_s = signal.timeout_s
        self._transport = log_transport(signal)
        self._shut_down = False

    def describe(self) -> str:
        return f"{self.protocol} to {self.endpoint.redacted}"

    def records(self, kills: Iterable[Record], observed_ns: Optional[int] = None) -> list[Any]:
        """The SDK's ReadableLogRecords for `kills`, built exactly as its own processors build them."""
        from opentelemetry._logs import LogRecord, SeverityNumber
        from opentelemetry.sdk._logs import ReadableLogRecord, ReadWriteLogRecord
        from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

        now = observed_ns if observed_ns is not None else time.time_ns()
        out = []
        for kill in kills:
            fields = log_record(kill)
            # with --traces the record carries its OOM episode's trace, for a jump to the trace backend
            context = None
            if kill.trace_id and kill.span_id:
                span = SpanContext(int(kill.trace_id, 16), int(kill.span_id, 16), is_remote=False,
                                   trace_flags=TraceFlags(TraceFlags.SAMPLED))
                context = set_span_in_context(NonRecordingSpan(span))
            api_record = LogRecord(
                timestamp=kill.time_unix_nano or None,
                observed_timestamp=now,
                severity_number=SeverityNumber(fields.severity_number),
                severity_text=fields.severity_text,
                body=fields.body,
                attributes=fields.attributes,
                event_name=fields.event_name,
                context=context,
            )
            # ReadWriteLogRecord applies the attribute limits (OTEL_ATTRIBUTE_*_LIMIT), as Logger.emit does
            rw = ReadWriteLogRecord(log_record=api_record, resource=self.resource,
                                    instrumentation_scope=self._scope, limits=self._limits)
            out.append(ReadableLogRecord(log_record=rw.log_record, resource=self.resource,
                                         instrumentation_scope=self._scope, limits=self._limits))
        return out

    def send(self, kills: Sequence[Record], timeout_s: Optional[float] = None) -> ExportResult:
        """Export now, one attempt of at most `timeout_s` (default OTEL_EXPORTER_OTLP_TIMEOUT)."""
        if not kills:
            return ExportResult("accepted")
        from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs

        if self._shut_down:
            return ExportResult(RETRY, message="shut down")
        timeout = self.timeout_s if timeout_s is None else min(self.timeout_s, timeout_s)
        try:
            result = self._transport.export(encode_logs(self.records(kills)), timeout)
        except Exception as e:  # noqa: BLE001 - a bug here must read as "not delivered", not kill the sender
            log.exception("OTLP log export raised")
            result = ExportResult(RETRY, message=type(e).__name__)
        if not result.ok:
            self.export_failures += 1
            if self.on_failure is not None:
                self.on_failure()
        return result

    def shutdown(self) -> None:
        # also aborts an export in flight (gRPC); the agent may call it twice (out of time, teardown)
        if not self._shut_down:
            self._shut_down = True
            self._transport.close()
