"""Acknowledged export of OOM episodes as spans (`--traces`).

An episode (`model.OomEpisode`: pressure start or kill -> memory reclaimed) becomes one span named
`oom.episode` with the kill, the pressure and the reclaim as span events. Its trace and span ids
were chosen when the episode started, so the log records of the episode (stamped by
`episode.EpisodeTracker` before they were spooled) carry the same ids and a log backend can jump to
the trace. Like the logs, spans leave the spool only once the collector accepted them: the SDK's
BatchSpanProcessor would drop them on a failed export, so `TraceSender.send` exports synchronously.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from .. import __version__
from ..schema.mapping import SCOPE_NAME
from ..schema.records import OomEpisode
from ..text import for_otlp
from .env import SignalSettings
from .exporters import span_exporter

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource

log = logging.getLogger("otel_oom.otlp")

SPAN_NAME = "oom.episode"


def span_attributes(ep: OomEpisode) -> dict[str, Any]:
    attrs = {
        "oom.episode.scope": ep.scope,
        "oom.episode.outcome": ep.outcome,
        "oom.episode.ended_by": ep.ended_by,
        "oom.episode.kills": ep.kills,
        "oom.memcg.path": ep.cgroup_path,
        "container.id": ep.container_id,
        "container.runtime.name": ep.container_runtime,
        "k8s.pod.uid": ep.pod_uid,
    }
    return {k: (for_otlp(v) if isinstance(v, str) else v) for k, v in attrs.items() if v is not None}


class TraceSender:
    """Synchronous, acknowledged export of OOM episodes as spans."""

    def __init__(self, resource: "Resource", signal: SignalSettings,
                 on_failure: Optional[Callable[[], None]] = None) -> None:
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self.resource = resource
        self.protocol = signal.protocol
        self.endpoint = signal.endpoint
        self.on_failure = on_failure
        self._scope = InstrumentationScope(SCOPE_NAME, __version__)
        self._exporter = span_exporter(signal)
        self._shut_down = False

    def describe(self) -> str:
        return f"traces {self.protocol} to {self.endpoint.redacted}"

    def spans(self, episodes: Sequence[OomEpisode]) -> list[Any]:
        """The SDK's ReadableSpans for `episodes`."""
        from opentelemetry.sdk.trace import Event, ReadableSpan
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

        out = []
        for ep in episodes:
            ctx = SpanContext(int(ep.trace_id, 16), int(ep.span_id, 16), is_remote=False,
                              trace_flags=TraceFlags(TraceFlags.SAMPLED))
            events = [Event(str(e["name"]), {k: (for_otlp(v) if isinstance(v, str) else v)
                                             for k, v in dict(e.get("attributes") or {}).items() if v is not None},
                            int(e["time_unix_nano"]))
                      for e in ep.events]
            # a kill, or an OOM nobody was killed for, is what an operator looks for: mark it as an error
            status = Status(StatusCode.ERROR, ep.outcome) if ep.outcome in ("kill", "no_kill") else Status(StatusCode.OK)
            out.append(ReadableSpan(name=SPAN_NAME, context=ctx, resource=self.resource,
                                    attributes=span_attributes(ep), events=events, kind=SpanKind.INTERNAL,
                                    status=status, start_time=ep.start_unix_nano,
                                    end_time=max(ep.end_unix_nano, ep.start_unix_nano),
                                    instrumentation_scope=self._scope))
        return out

    def send(self, episodes: Sequence[OomEpisode]) -> bool:
        if not episodes:
            return True
        from opentelemetry.sdk.trace.export import SpanExportResult

        if self._shut_down:
            return False
        try:
            ok = self._exporter.export(self.spans(episodes)) is SpanExportResult.SUCCESS
        except Exception:  # noqa: BLE001 - an exporter bug must read as "not delivered"
            log.exception("OTLP span export raised")
            ok = False
        if not ok and self.on_failure is not None:
            self.on_failure()
        return ok

    def shutdown(self) -> None:
        if not self._shut_down:
            self._shut_down = True
            self._exporter.shutdown()
