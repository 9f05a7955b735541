"""Acknowledged export of spooled records: log records to the collector's logs service, the OOM
episodes' spans (--traces) to its trace service, each one attempt that says what the collector answered.

OOM events do not go through the SDK's BatchLogRecordProcessor or span processor: they drop what
the collector did not take and keep nothing on disk. `OtlpExport.send()` builds one request from
records the worker encoded when it spooled them (`requests.py`), sends it once (`transport.py`)
and returns the collector's answer (accepted, partly rejected, rejected, too large, retry later),
so the sender keeps records in its spool until they are settled, the same way for both signals.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from .env import OtlpSettings, SignalSettings
from .requests import Requests, readable
from .spooled import LOGS, TRACES
from .transport import ACCEPTED, RETRY, ExportResult, transport

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource

log = logging.getLogger("otel_oom.otlp")


class OtlpExport:
    """Logs always; traces when `traces` (--traces). Everything about each connection (protocol,
    endpoint, headers, TLS, timeout, compression) comes from `env.resolve_otlp`, per signal."""

    def __init__(self, resource: "Resource", settings: OtlpSettings, traces: bool = False,
                 on_failure: Optional[Callable[[str], None]] = None) -> None:
        self._requests = Requests(resource)
        self._settings: dict[str, SignalSettings] = {LOGS: settings.logs}
        if traces and settings.traces is not None:
            self._settings[TRACES] = settings.traces
        self._transports = {signal: transport(s, signal) for signal, s in self._settings.items()}
        self.on_failure = on_failure     # called with the signal of every attempt not accepted
        self.export_failures: Counter[str] = Counter()
        self._shut_down = False

    def carries(self, signal: str) -> bool:
        return signal in self._transports

    def describe(self) -> str:
        return ", ".join(f"{signal} {s.protocol} to {s.endpoint.redacted}" for signal, s in self._settings.items())

    def send(self, signal: str, messages: Sequence[bytes], timeout_s: Optional[float] = None) -> ExportResult:
        """Export now, one attempt of at most `timeout_s` (default the signal's OTEL_EXPORTER_OTLP_TIMEOUT)."""
        if not messages:
            return ExportResult(ACCEPTED)
        if self._shut_down:
            return ExportResult(RETRY, message="shut down")
        limit = self._settings[signal].timeout_s
        timeout = limit if timeout_s is None else min(limit, timeout_s)
        try:
            result = self._transports[signal].export(self._requests.build(signal, messages), timeout)
        except Exception as e:  # noqa: BLE001 - a bug here must read as "not delivered", not kill the sender
            log.exception("OTLP %s export raised", signal)
            result = ExportResult(RETRY, message=type(e).__name__)
        if result.rejected:
            bounded = result.bounded(len(messages))
            if bounded is not result:
                log.warning("OTLP %s: %s", signal, bounded.message[-200:])
            result = bounded
        if not result.ok:
            self.export_failures[signal] += 1
            if self.on_failure is not None:
                self.on_failure(signal)
        return result

    def readable(self, signal: str, message: bytes) -> dict[str, Any]:
        """A spooled message as JSON-able data, for an operator (parked.jsonl)."""
        return readable(signal, message)

    def shutdown(self) -> None:
        # also aborts an export in flight (gRPC); the agent may call it twice (out of time, teardown)
        if not self._shut_down:
            self._shut_down = True
            for t in self._transports.values():
                t.close()
