"""Acknowledged export of OOM kills as `oom.kill` log records.

OOM events do not go through the SDK's BatchLogRecordProcessor: it drops a batch the collector
did not take and keeps nothing on disk. `LogSender.send()` exports synchronously and says whether
the collector accepted the batch, so the caller can keep events in its spool until it did. This is
the only module that touches the unstable logs SDK (`opentelemetry.sdk._logs`).
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Sequence

from .. import __version__
from ..model import OomKill
from .env import SignalSettings
from .exporters import log_exporter
from .mapping import EVENT_NAME, SCOPE_NAME, log_attributes, log_body

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource

log = logging.getLogger("otel_oom.otlp")


class LogSender:
    """Synchronous, acknowledged export of OOM kills as `oom.kill` log records.

    The protocol and endpoint come from `env.resolve_otlp`; the SDK exporter reads the rest
    (headers, TLS, timeout, compression) from the standard environment.
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
        self._exporter = log_exporter(signal)
        self._shut_down = False

    def describe(self) -> str:
        return f"{self.protocol} to {self.endpoint.redacted}"

    def records(self, kills: Iterable[OomKill], observed_ns: Optional[int] = None) -> list[Any]:
        """The SDK's ReadableLogRecords for `kills`, built exactly as its own processors build them."""
        from opentelemetry._logs import LogRecord, SeverityNumber
        from opentelemetry.sdk._logs import ReadableLogRecord, ReadWriteLogRecord

        now = observed_ns if observed_ns is not None else time.time_ns()
        out = []
        for kill in kills:
            api_record = LogRecord(
                timestamp=kill.time_unix_nano or None,
                observed_timestamp=now,
                severity_number=SeverityNumber.ERROR,
                severity_text="ERROR",
                body=log_body(kill),
                attributes=log_attributes(kill),
                event_name=EVENT_NAME,
            )
            # ReadWriteLogRecord applies the attribute limits (OTEL_ATTRIBUTE_*_LIMIT), as Logger.emit does
            rw = ReadWriteLogRecord(log_record=api_record, resource=self.resource,
                                    instrumentation_scope=self._scope, limits=self._limits)
            out.append(ReadableLogRecord(log_record=rw.log_record, resource=self.resource,
                                         instrumentation_scope=self._scope, limits=self._limits))
        return out

    def send(self, kills: Sequence[OomKill]) -> bool:
        """Export now; True only if the collector accepted the whole batch."""
        if not kills:
            return True
        from opentelemetry.sdk._logs.export import LogRecordExportResult

        if self._shut_down:
            return False
        try:
            ok = self._exporter.export(self.records(kills)) is LogRecordExportResult.SUCCESS
        except Exception:  # noqa: BLE001 - an exporter bug must read as "not delivered", not kill the sender
            log.exception("OTLP log export raised")
            ok = False
        if not ok:
            self.export_failures += 1
            if self.on_failure is not None:
                self.on_failure()
        return ok

    def shutdown(self) -> None:
        # also aborts a retry backoff in progress; the agent may call it twice (out of time, teardown)
        if not self._shut_down:
            self._shut_down = True
            self._exporter.shutdown()
